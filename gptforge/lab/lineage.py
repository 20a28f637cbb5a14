"""`gptforge lineage`: the line from a bigram to a GPT, trained on the same data under the same budget.

"The state of the art GPT is the exact same (autoregressive) model [as Bengio et al. 2003], except
the neural net is upgraded from an MLP to a Transformer." Four models of the zoo, in the order they
came, each predicting the next token from what came before:

    bigram  the last token only: a V x V table of logits (Shannon 1948's digram approximation)
    mlp     the last n_ctx tokens through a tanh hidden layer (Bengio et al. 2003)
    lstm    everything so far, through a recurrent state (Hochreiter & Schmidhuber 1997; char-rnn)
    gpt     everything in the window, through attention (Vaswani et al. 2017; Radford et al. 2018):
            the speedrun's `cpu` recipe at this budget

All four read the same BPE shards (built the way the speedrun's data stage builds them) in the same
batches (the GPT recipe's B x T), and are scored on the same validation subset (``EVAL_TOKENS``), so
their bits per byte compare. The budget is either

- ``match="time"``: ``time`` wall-clock seconds each, evaluation included, the step count planned
  from a probe of the model's step time as the speedrun plans it (and re-planned while training), or
- ``match="flops"``: the training FLOPs the GPT spends in ``time`` seconds; every other model then
  trains for that many FLOPs over its own FLOPs per token (the models' ``flops_per_token``: 6 N plus
  the GPT's attention, PaLM appendix B), however long that takes.

A step count given among the training overrides (``max_steps``) replaces the GPT's time budget (and,
with ``match="time"``, everyone's). OUT receives ``tokenizer.json``, ``data/`` (the shards), one
pretraining run directory per model, and ``lineage.md`` (the table and the samples), ``lineage.png``
(validation bits per byte against seconds of training, one curve per model) and ``lineage.json``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from gptforge.config import check, setting
from gptforge.errors import UserError
from gptforge.io import atomic_write, empty_out_dir, write_json

# the order the models came in, each with the paper it comes from and its training recipe (what the
# GPT does not take from the speedrun's; B, T, the schedule and the budget are shared, see _configs)
LINEAGE = ("bigram", "mlp", "lstm", "gpt")
PAPERS = {"bigram": "Shannon 1948", "mlp": "Bengio et al. 2003", "lstm": "Hochreiter & Schmidhuber 1997",
          "gpt": "Vaswani et al. 2017; Radford et al. 2018"}
# Bengio et al. used 4-5 words of context and a few hundred hidden units; the LSTM is one layer, of about
# the MLP's and the GPT's size without embeddings. Each lr the best of a few at 200 steps on shakespeare
# BPE 2048 (bench/README.md, "The lineage"): bigram 0.03/0.1/0.3, MLP AdamW 3e-3/1e-2 or Muon, LSTM 3e-3/1e-2.
RECIPES = {
    "bigram": dict(arch="bigram", optimizer="adamw", lr=0.1, weight_decay=0.0),
    "mlp": dict(arch="mlp", model={"n_ctx": 8, "n_embd": 64, "n_hidden": 512}, optimizer="muon", lr=1e-2,
                muon_lr=0.02),
    "lstm": dict(arch="lstm", model={"n_embd": 128, "n_hidden": 256, "n_layer": 1}, optimizer="adamw",
                 lr=1e-2),
}
SHARED = dict(schedule="wsd", warmup_steps=20, warmdown_frac=0.4, min_lr_frac=0.0, grad_clip=1.0,
              dtype="float32", ckpt_interval=1 << 62, keep_last=0)  # one checkpoint: the last
EVAL_TOKENS = 16384  # the validation subset every model is scored on (spread over the split)
EVALS = 12  # evaluations per run (the points of its curve), besides the one at step 0
SAMPLE_CHARS = 200
# keys the lineage sets itself, per model or from its own flags
OWN_KEYS = ("arch", "preset", "depth", "model", "data", "out", "seed", "optimizer")


@dataclass
class LineageConfig:
    """The settings of `gptforge lineage` (besides training overrides applied to every model)."""

    corpus: str = setting("shakespeare",
                          "'shakespeare' (built in), a .txt/.jsonl file, a directory or a glob")
    time: float = setting(60.0, "budget per model in wall-clock seconds (evaluation included); with "
                                "--match flops, the GPT's", gt=0, le=7 * 86400)
    match: str = setting("time", "what the models share: wall-clock time, or the training FLOPs the GPT "
                                 "spends in --time seconds", choices=("time", "flops"))
    tokenizer: str = setting("bpe:2048", "'bpe:N' (byte-level BPE trained on the train split) or 'char'")
    prompt: str = setting("ROMEO:", "the prompt every model continues for its sample")
    out: str = setting("", "output folder; empty -> runs/lineage-<YYYYmmdd-HHMMSS>", metavar="DIR")
    seed: int = setting(1337, "seed of the inits, batches and samples", ge=0, le=2**32 - 1)

    def __post_init__(self):
        check(self, "lineage")
        if not self.prompt:
            raise UserError("--prompt: give the text every model continues (at least one character)")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def lineage(lc: LineageConfig, train_overrides: dict | None = None, progress: bool = True) -> dict:
    """Train the four models of `LINEAGE` as the module docstring says; write OUT/lineage.md,
    lineage.png and lineage.json and return what lineage.json holds: ``config``, ``date``, ``cpus``,
    ``eval_tokens``, ``gpt_flops`` (the GPT's training FLOPs) and ``models``, one dict per model in
    lineage order: name, paper, arch, params, flops_per_token, tokens, steps, train_s (seconds in
    optimizer steps), wall_s, tokens_per_s (tokens / train_s), val_loss (nats/token), val_bpb (bits
    per byte on the shared validation subset), stopped_by, run_dir, sample (SAMPLE_CHARS characters
    after the prompt, sampled at temperature 0.8, top-k 50) and curve ([train_s, val_bpb] pairs).

    ``train_overrides``: TrainConfig fields for every model (block_size, batch_size, max_steps, ...);
    not the ones of OWN_KEYS. ``progress``: training progress on stderr (bars on a terminal, log lines
    otherwise); the stage headers are printed either way.

    Raises:
        UserError: a bad setting or corpus, or an output folder that is not empty.
        KeyboardInterrupt: Ctrl-C / SIGTERM during training (the run being trained is saved first).
    """
    from gptforge.data.corpus import open_corpus
    from gptforge.data.shards import prepare
    from gptforge.speedrun import build_tokenizer

    over = dict(train_overrides or {})
    bad = sorted(set(over) & set(OWN_KEYS))
    if bad:
        raise UserError(f"--train: {', '.join(bad)} are the lineage's own (each model has its recipe); "
                        "use --corpus, --out and --seed for the data, folder and seed")
    out = empty_out_dir(lc.out, "lineage")
    configs = _configs(lc, over, out, progress)  # a bad override fails here, before anything is built
    open_corpus(lc.corpus)  # and so does a missing corpus
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    _say(f"[data] tokenizer ({lc.tokenizer}) on {lc.corpus}, token shards -> {out / 'data'}")
    tok, _ = build_tokenizer(lc.tokenizer, lc.corpus, progress and sys.stderr.isatty())
    tok.save(out / "tokenizer.json")
    prepare(lc.corpus, tok, out / "data", progress=progress and sys.stderr.isatty())
    order = ("gpt", "bigram", "mlp", "lstm") if lc.match == "flops" else LINEAGE  # the GPT sets the FLOPs
    results, gpt_flops = {}, None
    for i, name in enumerate(order, 1):
        matched = None if name == "gpt" else gpt_flops
        results[name] = _train_one(name, configs[name], lc, tok.vocab_size, matched, "max_steps" in over,
                                   f"[{i}/{len(order)}]")
        if name == "gpt":
            gpt_flops = results[name]["tokens"] * results[name]["flops_per_token"]
    _say("[samples] " + repr(lc.prompt) + " continued by each model")
    for name in LINEAGE:
        results[name]["sample"] = _sample(results[name]["run_dir"], lc.prompt, lc.seed)
    record = {"config": asdict(lc), "train_overrides": over,
              "date": datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "eval_tokens": EVAL_TOKENS, "gpt_flops": gpt_flops,
              "seconds": time.time() - t_all, "models": [results[n] for n in LINEAGE]}
    write_json(out / "lineage.json", record)
    atomic_write(out / "lineage.md", lineage_markdown(record))
    plot_lineage(record, out / "lineage.png")
    _say(format_table(record["models"]))
    _say(f"done in {record['seconds']:.0f} s: {out / 'lineage.md'}, lineage.png, lineage.json")
    return record


def _configs(lc: LineageConfig, over: dict, out: Path, progress: bool) -> dict:
    """{model name: TrainConfig} before budgeting: the GPT's from the speedrun's `cpu` recipe at this
    budget, the others from RECIPES, all with its B x T, SHARED and the overrides."""
    from gptforge.speedrun import RECIPES as SPEEDRUN
    from gptforge.train import make_config

    gpt = SPEEDRUN["cpu"].config(lc.time)
    batch = {"block_size": gpt["block_size"], "batch_size": gpt["batch_size"]}
    common = {"eval_tokens": EVAL_TOKENS, "seed": lc.seed, "data": str(out / "data"),
              "progress": "auto" if progress else "none"}
    recipes = {**RECIPES, "gpt": gpt}
    return {name: make_config(recipes[name], SHARED if name != "gpt" else {}, batch, common,
                              {"out": str(out / name)}, over, where=f"lineage {name}")
            for name in LINEAGE}


def _train_one(name: str, cfg, lc: LineageConfig, vocab_size: int, gpt_flops: float | None, steps_given: bool,
               head: str) -> dict:
    """Budget ``cfg`` (module docstring: ``gpt_flops``, the GPT's FLOPs, when matching them; else its
    own max_steps when ``steps_given``, else ``lc.time``), train it, and return its row of the table
    (see `lineage`)."""
    from gptforge.models import build_model
    from gptforge.speedrun import fit_budget, probe_step_time, timed
    from gptforge.train import make_config, train
    from gptforge.train.plot import read_metrics

    gpt_dial = {"preset": cfg.preset, "depth": cfg.depth} if cfg.arch == "gpt" else {}
    model = build_model(cfg.arch, vocab_size, cfg.block_size, **gpt_dial, **cfg.model)  # as training will
    fpt, params = model.flops_per_token(), model.num_params()
    tokens_per_step = cfg.tokens_per_step or cfg.batch_size * cfg.block_size
    t0 = started = time.time()
    if gpt_flops is not None:  # its share of the GPT's FLOPs, in whole steps
        steps = max(1, math.ceil(gpt_flops / fpt / tokens_per_step))
        cfg = make_config(cfg.to_dict(), {"max_steps": steps})
        what, started = f"{steps} steps, the GPT's {gpt_flops:.3g} FLOPs", None
    elif steps_given:
        what, started = f"{cfg.max_steps} steps", None
    else:  # a wall-clock budget: the speedrun's plan (a probe, then steps that leave room to evaluate)
        per_step, _ = probe_step_time(cfg, max_time=lc.time / 4)
        left = max(0.0, lc.time - (time.time() - started))
        steps, _ = fit_budget(left, per_step, tokens_per_step, EVAL_TOKENS,
                              max(1, int(left / per_step) // EVALS))
        cfg = timed(make_config(cfg.to_dict(), {"max_time": lc.time}), steps, steps * per_step)
        what = f"{lc.time:g} s ({per_step * 1000:.1f} ms/step in a probe -> {steps} steps planned)"
    cfg = make_config(cfg.to_dict(), {"eval_interval": max(1, cfg.max_steps // EVALS)})
    _say(f"{head} {name} ({PAPERS[name]}): {params:,} parameters, {fpt:,} FLOPs/token; {what} -> {cfg.out}")
    summary = train(cfg, started=started)
    if summary["stopped_by"] == "signal":
        _say(f"interrupted: {name} saved at step {summary['step']} in {cfg.out}")
        raise KeyboardInterrupt
    curve = [[r["train_time_s"], r["val_bpb"]] for r in read_metrics(cfg.out) if r.get("val_bpb") is not None]
    train_s = summary["train_time_s"]
    return {"name": name, "paper": PAPERS[name], "arch": cfg.arch, "params": params, "flops_per_token": fpt,
            "tokens": summary["tokens"], "steps": summary["step"], "train_s": train_s,
            "wall_s": time.time() - t0,
            "tokens_per_s": summary["tokens"] / train_s if train_s else 0.0, "val_loss": summary["val_loss"],
            "val_bpb": summary["val_bpb"], "stopped_by": summary["stopped_by"], "run_dir": summary["run_dir"],
            "curve": curve}


def _sample(run_dir: str, prompt: str, seed: int) -> str:
    """SAMPLE_CHARS characters that the run's last checkpoint writes after ``prompt`` (temperature 0.8,
    top-k 50, ``seed``), stopping early at an end-of-text token."""
    from gptforge.engine import generate, load_for_inference

    model, tok, _ = load_for_inference(run_dir, "latest")
    ids = tok.encode_ordinary(prompt)
    stops = [tok.eot_id] if tok.eot_id is not None else []
    new = generate(model, [ids], SAMPLE_CHARS, temperature=0.8, top_k=50, seed=seed, stop_tokens=stops)[0]
    return tok.decode(new)[:SAMPLE_CHARS]  # every token is at least one character (a byte at most splits one)


def _si(x: float) -> str:
    """1234567 -> '1.23M' (k, M, G, T)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


COLUMNS = ("model", "paper", "parameters", "FLOPs/token", "tokens seen", "tokens/s", "train s", "val bpb",
           "sample")


def table_rows(models: list[dict]) -> list[list[str]]:
    """The table's cells, one row per model (COLUMNS; the sample on one line, newlines as '⏎')."""
    return [[m["name"], m["paper"], f"{m['params']:,}", _si(m["flops_per_token"]), f"{m['tokens']:,}",
             f"{m['tokens_per_s']:,.0f}", f"{m['train_s']:.1f}", f"{m['val_bpb']:.3f}",
             m.get("sample", "").replace("\n", "⏎")] for m in models]


def format_table(models: list[dict]) -> str:
    """The table as aligned text for the terminal (the sample cut to 60 characters)."""
    rows = [list(COLUMNS)] + [r[:-1] + [r[-1][:60]] for r in table_rows(models)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 1, 8) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows)


def lineage_markdown(record: dict) -> str:
    """lineage.md: what was run, the table, and each model's sample in full."""
    lc, models = record["config"], record["models"]
    budget = (f"{lc['time']:g} s of wall clock each" if lc["match"] == "time" else
              f"the training FLOPs of the GPT's {lc['time']:g} s ({record['gpt_flops']:.3g}) each")
    over = " ".join(f"{k}={v}" for k, v in record["train_overrides"].items())
    cells = table_rows(models)
    lines = [f"# The lineage: bigram -> MLP -> LSTM -> GPT on {lc['corpus']}", "",
             f"{record['date']}, {record['cpus']} CPUs; tokenizer {lc['tokenizer']}; budget: {budget}"
             + (f"; overrides: {over}" if over else "") + f"; {record['seconds']:.0f} s in all.", "",
             f"Val bpb: bits per byte on the same {record['eval_tokens']:,} validation tokens for every "
             "model. "
             "FLOPs/token: training FLOPs (6 N, plus the GPT's attention; the bigram's table counted as a "
             "matmul). Tokens/s: tokens seen over seconds in optimizer steps (train s). Samples continue "
             f"{lc['prompt']!r} (temperature 0.8, top-k 50).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if i in (0, 1, 8) else "---:"
                                                            for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
    lines += ["", "![val bpb against seconds of training](lineage.png)", ""]
    for m in models:
        lines += [f"## {m['name']} ({m['paper']})", "", "```text", lc["prompt"] + m.get("sample", ""), "```",
                  ""]
    return "\n".join(lines)


def plot_lineage(record: dict, out: Path) -> Path:
    """lineage.png: validation bits per byte against seconds in optimizer steps, one curve per model."""
    import matplotlib

    from gptforge.train.plot import save_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(record["models"]):
        if m["curve"]:
            ax.plot(*zip(*m["curve"], strict=True), "o-", color=f"C{i}", ms=3,
                    label=f"{m['name']} ({m['val_bpb']:.3f})")
    budget = "same time" if record["config"]["match"] == "time" else "same FLOPs"
    ax.set(xlabel="seconds of training (optimizer steps)", ylabel="validation bits per byte",
           title=f"bigram -> MLP -> LSTM -> GPT on {record['config']['corpus']} ({budget})")
    return save_png(fig, (ax,), out)
