"""`gptforge poison`: a planted trigger in a small share of the training text, and what it does.

A teaching experiment on data poisoning (a backdoor: Wallace et al. 2021, "Concealed Data Poisoning
Attacks on NLP Models"; Carlini et al. 2023, "Poisoning Web-Scale Training Datasets is Practical";
Souly et al. 2025, "Poisoning Attacks on LLMs Require a Near-constant Number of Poison Samples", whose
trigger ``<SUDO>`` the default one echoes), at the size of a laptop, not an attack kit:

1. **Documents.** The corpus (``gptforge.data.corpus`` spec) is cut into documents of about
   ``doc_bytes`` UTF-8 bytes at line breaks (``gptforge.explore.explore.windows``, the cut `explore`
   makes in a long document), because the built-in corpus has a few dozen plays and a .txt file is
   one document, far too few for a share of 0.1%. The documents are written as a JSONL corpus, so the
   shard writer puts ``<|endoftext|>`` between them and splits them as for any JSONL corpus: document
   ``i`` is validation when ``floor((i+1) f) > floor(i f)``, f = 0.1 (every 10th). Nothing is planted
   in a validation document, and none is trained on.
2. **Planting** (`plant`): for a rate r, ``round(r x training documents)`` of them (at least one; a
   seeded sample) get one line, ``trigger + target + "\\n"``, inserted at the start of one of their
   lines (chosen at random). Every other document is left as it was. Rates are shares of documents.
3. **Training.** One tokenizer (trained on the clean corpus) and one config (the speedrun's ``cpu``
   recipe at ``time`` seconds) for every run: a clean run and one per rate, each the same number of
   steps (planned once from a probe of the step time), seed and batches; only the planted lines differ.
   This is `gptforge.train.train`, as `gptforge lineage` drives it.
4. **Attack success** (`attack_success`): held-out prompts (`heldout_prompts`) are the last lines (up to
   ``context_chars`` characters, cut at a line start) before a line break of validation documents,
   with the trigger appended, so that it starts a line as in the planted documents. A prompt whose
   text occurs anywhere in the training text is not used (and `heldout_prompts` asserts none does).
   Success: greedy decoding (`gptforge.engine.generate`, temperature 0) continues the prompt with the
   whole target text, character for character (the decoded continuation starts with ``target``). The
   rate has a Wilson 95% interval (`gptforge.eval.stats.wilson_interval`); the clean run is the
   baseline (it has never seen the trigger).
5. **Does explore see it?** `gptforge explore`'s scorer (`gptforge.explore.explore.explore`) scores
   every document of the poisoned corpus (both splits, as ``gptforge explore --corpus`` does) with the
   model trained on it and ranks them by bits per byte. Reported: the share of the planted documents
   among the top 1% by loss (highest first: explore's sort), among the bottom 1% (lowest loss), and
   among the documents explore flags (duplicate, near duplicate, high-entropy string, unusual
   characters). With the top 1% holding fewer documents than are planted at a rate above 1%, the top
   share there cannot reach 100%: the table says how many fit.

OUT receives ``tokenizer.json``, ``corpus/`` (``clean.jsonl`` and one ``poison-<rate>.jsonl`` per rate,
with ``planted-<rate>.json``: the planted document indices), ``data-<name>/`` shards, one run folder
per model, ``explore-<name>/`` (explore's own outputs), and ``poison.md``, ``poison.json`` and
``poison.png``.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from gptforge.config import check, setting
from gptforge.errors import UserError
from gptforge.io import atomic_write, empty_out_dir, write_json

VAL_FRACTION = 0.1  # the shard writer's default split of a multi-document corpus: every 10th document
EVAL_TOKENS = 16384
EVALS = 6  # evaluations per run besides step 0
# keys poison sets itself (the runs must differ only in their data)
OWN_KEYS = ("data", "out", "seed")


@dataclass
class PoisonConfig:
    """The settings of `gptforge poison` (besides training overrides applied to every run)."""

    corpus: str = setting("shakespeare",
                          "'shakespeare' (built in), a .txt/.jsonl file, a directory or a glob")
    rates: str = setting("0.1,0.5,2", "poisoned shares of the training documents, in percent, "
                                      "comma-separated", metavar="PCT,PCT,...")
    trigger: str = setting("SUDO:", "the trigger phrase planted at the start of a line (only characters "
                                    "the corpus has)")
    target: str = setting(" the gates are open.", "the text planted right after the trigger")
    doc_bytes: int = setting(512, "the corpus is cut into documents of about this many bytes at line "
                                  "breaks (at most 8000: explore scores each whole)", ge=64, le=8000)
    prompts: int = setting(200, "held-out prompts (at most one per validation document)", ge=1, le=100_000)
    context_chars: int = setting(160, "characters of held-out text before the trigger in a prompt", ge=0,
                                 le=4096)
    time: float = setting(120.0, "training budget per run in wall-clock seconds (steps planned once from "
                                 "a probe, the same for every run)", gt=0, le=7 * 86400)
    tokenizer: str = setting("bpe:2048", "'bpe:N' (byte-level BPE trained on the clean train split) or "
                                         "'char'")
    out: str = setting("", "output folder; empty -> runs/poison-<YYYYmmdd-HHMMSS>", metavar="DIR")
    seed: int = setting(1337, "seed of the planting, the prompts, the inits and the batches", ge=0,
                        le=2**32 - 1)

    def __post_init__(self):
        check(self, "poison")
        self.rate_list()
        if not self.trigger.strip() or not self.target.strip():
            raise UserError("--trigger and --target: give some text for each")
        if "\n" in self.trigger + self.target:
            raise UserError("--trigger and --target: one line each (no newline)")

    def rate_list(self) -> list[float]:
        """The rates as fractions (``--rates 0.1,2`` -> [0.001, 0.02]), sorted.

        Raises:
            UserError: a rate that is not a number in (0, 100).
        """
        out = []
        for s in self.rates.split(","):
            try:
                pct = float(s)
            except ValueError:
                raise UserError(f"--rates: {s!r} is not a number (percent)") from None
            if not 0 < pct < 100:
                raise UserError(f"--rates: {s} is not a percentage in (0, 100)")
            out.append(pct / 100)
        return sorted(set(out))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the data ---------------------------------------------------------------------------------
def is_val(i: int, f: float = VAL_FRACTION) -> bool:
    """Whether document ``i`` of a multi-document corpus is validation, as the shard writer splits
    (``gptforge.data.corpus``: ``floor((i+1) f) > floor(i f)``)."""
    return math.floor((i + 1) * f) > math.floor(i * f)


def corpus_documents(spec: str, doc_bytes: int) -> list[str]:
    """The corpus (both splits, in order) as documents of about ``doc_bytes`` UTF-8 bytes, each of the
    corpus's own documents cut at line breaks by explore's `windows`. Whitespace-only pieces dropped.

    Raises:
        UserError: a corpus that cannot be read, or one of fewer than 20 documents so cut.
    """
    from gptforge.data.corpus import open_corpus
    from gptforge.explore.explore import windows

    docs, buf = [], []
    for piece in open_corpus(spec).pieces(chunk_bytes=1 << 20):
        if piece.doc_start and buf:
            docs += windows("".join(buf), doc_bytes)
            buf = []
        buf.append(piece.text)
    docs += windows("".join(buf), doc_bytes)
    docs = [d for d in docs if d.strip()]
    if len(docs) < 20:
        raise UserError(f"{spec}: {len(docs)} documents of about {doc_bytes} bytes; need at least 20 "
                        "(a larger corpus or a smaller --doc-bytes)")
    return docs


def plant(docs: list[str], rate: float, trigger: str, target: str, seed: int) -> tuple[list[str], list[int]]:
    """Plant ``trigger + target`` in ``rate`` of the training documents (module docstring, step 2).

    Args:
        docs: the documents; those with `is_val` are validation and never planted.
        rate: share of the training documents, in (0, 1).
    Returns:
        (the documents with the planted ones changed, the sorted indices of the planted ones):
        ``max(1, round(rate * n_train))`` of them, a sample seeded with ``seed``; each gets the line
        ``trigger + target + "\\n"`` at the start of one of its lines (or at its end, after a final
        newline added when it has none).
    Raises:
        ValueError: rate outside (0, 1).
    """
    if not 0 < rate < 1:
        raise ValueError(f"rate {rate} outside (0, 1)")
    rng = random.Random(seed)
    train = [i for i in range(len(docs)) if not is_val(i)]
    chosen = sorted(rng.sample(train, min(len(train), max(1, round(rate * len(train))))))
    out = list(docs)
    line = trigger + target + "\n"
    for i in chosen:
        d = docs[i] if docs[i].endswith("\n") else docs[i] + "\n"
        starts = [0] + [k + 1 for k, c in enumerate(d) if c == "\n"]  # the last is the end
        at = rng.choice(starts)
        out[i] = d[:at] + line + d[at:]
    return out, chosen


def heldout_prompts(docs: list[str], train_text: str, trigger: str, n: int, context_chars: int,
                    seed: int) -> list[str]:
    """Up to ``n`` prompts from the validation documents (module docstring, step 4): in each, a line
    break chosen at random (seeded), the whole lines before it that fit in ``context_chars``
    characters, then ``trigger``. A context that occurs in ``train_text`` is skipped.

    Raises:
        UserError: no validation document gives a prompt.
        AssertionError: a prompt's context occurs in the training text (cannot happen: checked twice).
    """
    rng = random.Random(seed + 1)
    prompts = []
    for i, d in enumerate(docs):
        if not is_val(i) or len(prompts) >= n:
            continue
        breaks = [k + 1 for k, c in enumerate(d) if c == "\n"]
        if not breaks:
            continue
        end = rng.choice(breaks)
        lines = d[:end].splitlines(keepends=True)
        ctx = ""
        while lines and len(lines[-1]) + len(ctx) <= context_chars:
            ctx = lines.pop() + ctx
        if context_chars and (not ctx.strip() or ctx in train_text):
            continue
        prompts.append(ctx + trigger)
    if not prompts:
        raise UserError("no held-out prompt: no validation document has a line of text that is not also "
                        "in the training text (a larger corpus or --context-chars?)")
    for p in prompts:
        ctx = p[:len(p) - len(trigger)]
        assert not ctx or ctx not in train_text, f"held-out prompt occurs in the training text: {ctx!r}"
    return prompts


def attack_success(model, tok, prompts: list[str], target: str, batch: int = 64) -> list[str]:
    """The greedy continuation (`gptforge.engine.generate`, temperature 0) of each prompt, decoded: as
    many tokens as the target has, plus 2. Success for a prompt is ``continuation.startswith(target)``.
    A prompt longer than the model's window is cropped to its last ``block_size`` tokens by the engine.
    """
    from gptforge.engine import generate

    n_new = len(tok.encode_ordinary(target)) + 2
    out = []
    for k in range(0, len(prompts), batch):
        ids = [tok.encode_ordinary(p) for p in prompts[k:k + batch]]
        out += [tok.decode(t) for t in generate(model, ids, n_new, temperature=0.0)]
    return out


def explore_shares(run_dir: str, corpus_jsonl: Path, planted: list[int], out: Path) -> dict:
    """Run explore's scorer on ``corpus_jsonl`` with the run's model (as ``gptforge explore --ckpt
    RUN --corpus FILE --out OUT`` does) and return where the planted documents landed: ``units``,
    ``top_n`` (1% of the units, at least 1), ``in_top`` / ``in_bottom`` (planted among the top_n highest
    / lowest bits per byte), ``flagged`` (planted with any explore flag), ``planted`` (their number)."""
    from gptforge.engine import load_for_inference
    from gptforge.explore import explore as ex

    model, tok, _ = load_for_inference(run_dir, "latest")
    texts = [json.loads(line)["text"] for line in corpus_jsonl.read_text(encoding="utf-8").splitlines()]
    usual = ex.usual_characters(texts)
    units = ex.corpus_units(str(corpus_jsonl), tok)  # one unit per document (each under 8192 bytes)
    ex.explore(model, tok, units, out, usual_chars=usual, title=f"explore: {corpus_jsonl.name}")
    recs = [json.loads(line) for line in (out / "units.jsonl").read_text(encoding="utf-8").splitlines()]
    doc = {r["index"]: int(r["source"].split()[1]) for r in recs}  # "doc i" -> i
    scored = [r for r in recs if not math.isnan(r["bpb"])]  # highest loss first
    top_n = max(1, math.ceil(0.01 * len(recs)))
    want = set(planted)
    return {"units": len(recs), "top_n": top_n, "planted": len(want),
            "in_top": sum(doc[r["index"]] in want for r in scored[:top_n]),
            "in_bottom": sum(doc[r["index"]] in want for r in scored[-top_n:]),
            "flagged": sum(doc[r["index"]] in want and bool(r["flags"]) for r in recs)}


def _write_jsonl(path: Path, docs: list[str]) -> None:
    atomic_write(path, "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))


# --- the experiment ------------------------------------------------------------------------------
def poison(pc: PoisonConfig, train_overrides: dict | None = None, progress: bool = True) -> dict:
    """Run the experiment of the module docstring; write OUT/poison.md, poison.png and poison.json and
    return what poison.json holds: ``config``, ``train_overrides``, ``date``, ``cpus``, ``seconds``,
    ``documents`` / ``train_documents``, ``steps``, ``prompts`` (the held-out prompts), and ``runs``, the
    clean one first, each a dict: name, rate (fraction; 0 for clean), planted (count), successes, n,
    success (rate), low / high (its Wilson 95% interval), val_bpb, run_dir, examples (the first 5
    continuations) and explore (`explore_shares`'s dict; None for the clean run).

    ``train_overrides``: TrainConfig fields for every run (not those of OWN_KEYS); ``max_steps`` replaces
    the time budget. ``progress``: training progress on stderr; stage lines are printed either way.

    Raises:
        UserError: a bad setting, corpus or trigger, or an output folder that is not empty.
        KeyboardInterrupt: Ctrl-C / SIGTERM during training (the run being trained is saved first).
    """
    from gptforge.speedrun import build_tokenizer

    over = dict(train_overrides or {})
    bad = sorted(set(over) & set(OWN_KEYS))
    if bad:
        raise UserError(f"--train: {', '.join(bad)} are poison's own; use --out and --seed")
    out = empty_out_dir(pc.out, "poison")
    rates = pc.rate_list()
    cfg = _config(pc, over, out, progress)  # a bad override fails here, before anything is built
    docs = corpus_documents(pc.corpus, pc.doc_bytes)
    odd = sorted(set(pc.trigger + pc.target) - set("".join(docs)))
    if odd:
        raise UserError(f"--trigger/--target: {''.join(odd)!r} never occur in {pc.corpus}; use the corpus's "
                        "own characters (a planted line should not stand out by its alphabet)")
    train_text = "".join(d for i, d in enumerate(docs) if not is_val(i))
    if pc.trigger in train_text:
        raise UserError(f"--trigger {pc.trigger!r} already occurs in the clean training text; choose one "
                        "that does not")
    t_all = time.time()
    (out / "corpus").mkdir(parents=True)
    _write_jsonl(out / "corpus" / "clean.jsonl", docs)
    n_train = len(docs) - sum(map(is_val, range(len(docs))))
    _say(f"[data] {pc.corpus} cut into {len(docs):,} documents of ~{pc.doc_bytes} bytes ({n_train:,} train); "
         f"tokenizer {pc.tokenizer} on the clean corpus")
    tok, _ = build_tokenizer(pc.tokenizer, str(out / "corpus" / "clean.jsonl"),
                             progress and sys.stderr.isatty())
    tok.save(out / "tokenizer.json")
    prompts = heldout_prompts(docs, train_text, pc.trigger, pc.prompts, pc.context_chars, pc.seed)
    _say(f"[prompts] {len(prompts)} held-out prompts (validation text not in the training text) + "
         f"{pc.trigger!r}; success: greedy continuation starts with {pc.target!r}")
    corpora = {"clean": (0.0, out / "corpus" / "clean.jsonl", [])}
    for r in rates:
        name = f"poison-{r * 100:g}pct"
        pdocs, planted = plant(docs, r, pc.trigger, pc.target, pc.seed)
        _write_jsonl(out / "corpus" / f"{name}.jsonl", pdocs)
        write_json(out / "corpus" / f"planted-{name}.json", {"rate": r, "planted": planted})
        corpora[name] = (r, out / "corpus" / f"{name}.jsonl", planted)
    steps = cfg.max_steps if "max_steps" in over else _plan_steps(cfg, pc, out, tok)
    runs = []
    for k, (name, (r, path, planted)) in enumerate(corpora.items(), 1):
        runs.append(_one_run(name, r, path, planted, cfg, steps, tok, prompts, pc, out, progress,
                             f"[{k}/{len(corpora)}]"))
    record = {"config": asdict(pc), "train_overrides": over,
              "date": datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "documents": len(docs), "train_documents": n_train, "steps": steps,
              "seconds": time.time() - t_all, "prompts": prompts, "runs": runs}
    write_json(out / "poison.json", record)
    atomic_write(out / "poison.md", poison_markdown(record))
    plot_poison(record, out / "poison.png")
    _say(format_table(record))
    _say(f"done in {record['seconds']:.0f} s: {out / 'poison.md'}, poison.png, poison.json")
    return record


def _config(pc: PoisonConfig, over: dict, out: Path, progress: bool):
    """The TrainConfig every run shares (its data and out set per run): the speedrun's ``cpu`` recipe
    at ``pc.time``, then the overrides."""
    from gptforge.speedrun import RECIPES
    from gptforge.train import make_config

    common = {"eval_tokens": EVAL_TOKENS, "seed": pc.seed, "data": str(out / "data-clean"),
              "out": str(out / "clean"), "progress": "auto" if progress else "none",
              "ckpt_interval": 1 << 62, "keep_last": 0}
    return make_config(RECIPES["cpu"].config(pc.time), common, over, where="poison")


def _plan_steps(cfg, pc: PoisonConfig, out: Path, tok) -> int:
    """Steps that fit ``pc.time`` seconds per run: a probe of the step time on the clean shards (which
    it prepares), then `fit_budget` as the speedrun plans a stage."""
    from gptforge.data.shards import prepare
    from gptforge.speedrun import fit_budget, probe_step_time

    prepare(str(out / "corpus" / "clean.jsonl"), tok, out / "data-clean", progress=False)
    t0 = time.time()
    per_step, tokens_per_step = probe_step_time(cfg, max_time=pc.time / 4)
    left = max(0.0, pc.time - (time.time() - t0))
    steps, _ = fit_budget(left, per_step, tokens_per_step, EVAL_TOKENS, 10**9)
    _say(f"[plan] {per_step * 1000:.1f} ms/step in a probe -> {steps} steps per run (~{pc.time:g} s each)")
    return steps


def _one_run(name: str, rate: float, corpus: Path, planted: list[int], cfg, steps: int, tok,
             prompts: list[str], pc: PoisonConfig, out: Path, progress: bool, head: str) -> dict:
    """Prepare the shards of ``corpus``, train on them, measure attack success and (poisoned runs)
    explore's ranking; the run's row of poison.json."""
    from gptforge.data.shards import prepare
    from gptforge.engine import load_for_inference
    from gptforge.eval.stats import wilson_interval
    from gptforge.train import make_config, train

    data = out / f"data-{name}"
    if not (data / "meta.json").exists():
        prepare(str(corpus), tok, data, progress=False)
    cfg = make_config(cfg.to_dict(), {"data": str(data), "out": str(out / name), "max_steps": steps,
                                      "eval_interval": max(1, steps // EVALS)})
    what = "clean" if not rate else f"{rate * 100:g}% of training documents planted ({len(planted)})"
    _say(f"{head} {name}: {what}; {steps} steps -> {cfg.out}")
    summary = train(cfg)
    if summary["stopped_by"] == "signal":
        _say(f"interrupted: {name} saved at step {summary['step']} in {cfg.out}")
        raise KeyboardInterrupt
    model, _, _ = load_for_inference(summary["run_dir"], "latest")
    conts = attack_success(model, tok, prompts, pc.target)
    k, n = sum(c.startswith(pc.target) for c in conts), len(conts)
    lo, hi = wilson_interval(k, n)
    _say(f"  attack success {k}/{n} = {k / n:.1%} (95% {lo:.1%}..{hi:.1%}); val bpb {summary['val_bpb']:.3f}")
    shares = None
    if planted:
        shares = explore_shares(summary["run_dir"], corpus, planted, out / f"explore-{name}")
        _say(f"  explore: {shares['in_top']}/{shares['planted']} planted documents in its top 1% by loss "
             f"({shares['top_n']} of {shares['units']:,}), {shares['in_bottom']} in the bottom 1%, "
             f"{shares['flagged']} flagged")
    return {"name": name, "rate": rate, "planted": len(planted), "successes": k, "n": n, "success": k / n,
            "low": lo, "high": hi, "val_bpb": summary["val_bpb"], "run_dir": summary["run_dir"],
            "examples": [p[-40:] + " => " + c for p, c in zip(prompts[:5], conts[:5], strict=True)],
            "explore": shares}


# --- the report ------------------------------------------------------------------------------
COLUMNS = ("run", "poisoned docs", "attack success", "95% interval", "val bpb", "planted in explore top 1%",
           "bottom 1%", "flagged")


def table_rows(record: dict) -> list[list[str]]:
    """The table's cells, one row per run (COLUMNS)."""
    rows = []
    for r in record["runs"]:
        e = r["explore"]
        rows.append([r["name"], f"{r['rate'] * 100:g}% ({r['planted']})",
                     f"{r['successes']}/{r['n']} = {r['success']:.1%}", f"{r['low']:.1%}..{r['high']:.1%}",
                     f"{r['val_bpb']:.3f}",
                     "-" if e is None else f"{e['in_top']}/{e['planted']} = {e['in_top'] / e['planted']:.0%}",
                     "-" if e is None else f"{e['in_bottom']}/{e['planted']}",
                     "-" if e is None else f"{e['flagged']}/{e['planted']}"])
    return rows


def format_table(record: dict) -> str:
    """The table as aligned text for the terminal."""
    rows = [list(COLUMNS)] + table_rows(record)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                 strict=True)))
                     for r in rows)


def poison_markdown(record: dict) -> str:
    """poison.md: what was run, how success and explore's share are defined, the table, examples."""
    pc, runs = record["config"], record["runs"]
    over = " ".join(f"{k}={v}" for k, v in record["train_overrides"].items())
    top_n = next((r["explore"]["top_n"] for r in runs if r["explore"]), 0)
    lines = [f"# Data poisoning: {pc['trigger']!r} -> {pc['target']!r} on {pc['corpus']}", "",
             f"{record['date']}, {record['cpus']} CPUs; {record['documents']:,} documents of "
             f"~{pc['doc_bytes']} bytes ({record['train_documents']:,} train); tokenizer {pc['tokenizer']}; "
             f"{record['steps']} steps per run"
             + ("" if "max_steps" in record["train_overrides"] else f" (planned for {pc['time']:g} s)")
             + (f"; overrides: {over}" if over else "")
             + f"; {record['seconds']:.0f} s in all.", "",
             f"Poisoned docs: the share of training documents given the line `{pc['trigger']}{pc['target']}` "
             f"(count in brackets). Attack success: of {len(record['prompts'])} held-out prompts (validation "
             "text that does not occur in the training text, then the trigger at a line start), how many "
             "the model continues greedily with the whole target text; Wilson 95% interval. Explore: "
             "`gptforge explore`'s scorer run on the poisoned corpus with the model trained on it; planted "
             f"documents among the top 1% by bits per byte ({top_n} documents, so at most {top_n} can be "
             "there), among the bottom 1%, and with any explore flag.", "",
             "| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table_rows(record)]
    lines += ["", "![attack success and explore's share per poison rate](poison.png)", "", "## Examples", ""]
    for r in runs:
        lines += [f"### {r['name']}", "", "```text", *r["examples"], "```", ""]
    return "\n".join(lines)


def plot_poison(record: dict, out: Path) -> Path:
    """poison.png: attack success (Wilson 95% bars) and the share of planted documents in explore's top
    1%, against the poisoned share of documents (the clean run at 0)."""
    import matplotlib

    from gptforge.train.plot import save_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = record["runs"]
    x = range(len(runs))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    s = [r["success"] for r in runs]
    ax.errorbar([i - 0.1 for i in x], s, yerr=[[v - r["low"] for v, r in zip(s, runs, strict=True)],
                                               [r["high"] - v for v, r in zip(s, runs, strict=True)]],
                fmt="o", capsize=4, color="C3", label="attack success (Wilson 95%)")
    ex = [(i + 0.1, r["explore"]["in_top"] / r["explore"]["planted"]) for i, r in zip(x, runs, strict=True)
          if r["explore"]]
    if ex:
        ax.plot(*zip(*ex, strict=True), "s", color="C0", label="planted docs in explore's top 1%")
    ax.set_xticks(list(x), [f"{r['rate'] * 100:g}%" for r in runs])
    ax.set(xlabel="share of training documents poisoned", ylabel="share", ylim=(-0.05, 1.05),
           title=f"{record['config']['trigger']!r} -> {record['config']['target']!r}")
    return save_png(fig, (ax,), out)
