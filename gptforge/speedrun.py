"""`gptforge speedrun`: raw text to a model that writes, in one command, with a report.

Stages, each writing into the run folder ``OUT``::

    OUT/tokenizer.json   1. tokenizer: a byte-level BPE trained on the train split (or char-level)
    OUT/data/            2. token shards (train.bin, val.bin, meta.json)
    OUT/pretrain/        3. pretraining run: metrics.jsonl, ckpt/, config.json
    OUT/loss.png         4. loss curves
    OUT/samples.txt      5. samples from the best checkpoint
    OUT/report.md        6. the report: config, data, tokens seen, wall time, loss, bpb, MFU, samples

A recipe is a tokenizer plus a pretraining config (``RECIPES``). With a time budget the number of
steps is set from a short calibration run, so the learning-rate schedule (and its warmdown) ends
when the time does; the run stays deterministic for that step count.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gptforge.config import check, setting
from gptforge.errors import UserError
from gptforge.io import atomic_write, write_json


@dataclass
class Recipe:
    """A tokenizer and a pretraining config.

    tokenizer: "char" (nanoGPT's: every character of the corpus, no special tokens) or "bpe:N"
        (byte-level BPE with vocabulary N trained on the train split).
    train: TrainConfig fields (see gptforge.train.config).
    time: default training budget in seconds (None: the config's max_steps decides).
    short: overrides of ``train`` for budgets of at most SHORT_BUDGET seconds.
    """

    description: str
    tokenizer: str
    train: dict
    time: float | None = None
    sample_tokens: int = 300
    short: dict = field(default_factory=dict)

    def config(self, budget: float | None) -> dict:
        """The pretraining settings for a time budget in seconds (None: the recipe's default)."""
        budget = self.time if budget is None else budget
        if budget and budget <= SHORT_BUDGET and self.short:
            return {**self.train, **self.short, "model": {**self.train.get("model", {}),
                                                          **self.short.get("model", {})}}
        return dict(self.train)


# nanoGPT's README CPU recipe for shakespeare_char, as its train.py defaults make it: GPT-2 blocks
# without biases, tied embeddings, AdamW betas (0.9, 0.99), wd 0.1 on >= 2-D weights, grad clip 1.
NANOGPT_CPU = dict(
    arch="gpt", preset="gpt2", depth=4, model={"n_embd": 128, "n_head": 4, "bias": False, "dropout": 0.0},
    block_size=64, batch_size=12, max_steps=2000, optimizer="adamw", lr=1e-3, min_lr_frac=0.1,
    warmup_steps=100, beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0, schedule="cosine",
    dtype="float32", eval_interval=250, eval_tokens=0)

# Chosen by measurement on a 2-core CPU (bench/sweep_cpu.py; results in bench/README.md): a small
# modern GPT, Muon on the hidden matrices, AdamW at 1e-2 on embeddings/head, WSD schedule. Dropout
# 0.2: ten minutes is about eight passes over tiny shakespeare, and without it val loss turns up.
CPU = dict(
    arch="gpt", preset="modern", depth=4, model={"n_embd": 256, "n_head": 4, "dropout": 0.2}, block_size=128,
    batch_size=16, optimizer="muon", lr=1e-2, muon_lr=0.02, weight_decay=0.0, beta1=0.9, beta2=0.95,
    grad_clip=1.0, schedule="wsd", warmdown_frac=0.4, min_lr_frac=0.0, warmup_steps=20,
    dtype="float32", eval_interval=100, eval_tokens=0)
# Under a minute, a shallower, narrower model on smaller batches takes more steps and wins.
CPU_SHORT = dict(depth=2, model={"n_embd": 128, "n_head": 2, "dropout": 0.0}, batch_size=8)
SHORT_BUDGET = 60.0  # seconds
# A 12-step probe predicts sustained step time only to about +-20% on the 2-core test machine
# (two 600 s runs took 16-22% longer per step; bench/README.md). Budgets over a minute plan for
# 1.2x the probed time, so the budget is an upper bound rather than overrun.
SUSTAINED_SLOWDOWN = 1.2

RECIPES: dict[str, Recipe] = {
    "cpu": Recipe("small modern GPT (RoPE, RMSNorm, ReLU^2, QK-norm) with Muon, BPE tokens; minutes on a "
                  "laptop CPU", "bpe:2048", CPU, time=300, short=CPU_SHORT),
    "nanogpt-cpu": Recipe("nanoGPT's CPU shakespeare_char recipe, reproduced (char-level, 4x128, 2000 "
                          "iterations of AdamW)", "char", NANOGPT_CPU),
    "gpu-small": Recipe("nanochat-style d12 modern GPT on one GPU, bf16 autocast, torch.compile",
                        "bpe:32768", dict(arch="gpt", preset="modern", depth=12, block_size=1024,
                                          batch_size=32, optimizer="muon", lr=3e-3, muon_lr=0.02,
                                          weight_decay=0.0, schedule="wsd", warmdown_frac=0.4,
                                          min_lr_frac=0.0, warmup_steps=50, dtype="auto", compile=True,
                                          eval_interval=250, eval_tokens=262144, device="cuda"),
                        time=1800),
    "gpt2": Recipe("GPT-2 small (124M, exactly OpenAI's architecture), one GPU, bf16, compile (several GPUs: "
                   "torchrun -m gptforge pretrain)",
                   "bpe:50257", dict(arch="gpt", preset="gpt2", depth=12, block_size=1024, batch_size=16,
                                     tokens_per_step=524288, optimizer="adamw", lr=6e-4, min_lr_frac=0.1,
                                     warmup_steps=700, weight_decay=0.1, beta2=0.95, schedule="cosine",
                                     dtype="auto", compile=True, eval_interval=250, eval_tokens=1048576,
                                     device="cuda", max_steps=19073)),
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_tokenizer(spec: str, corpus: str, progress: bool):
    """(tokenizer, info) for a recipe's tokenizer spec ("char" or "bpe:N") on ``corpus``."""
    from gptforge.data.shards import resolve_tokenizer
    from gptforge.data.train_bpe import train_on_corpus

    t0 = time.perf_counter()
    if spec == "char":
        return resolve_tokenizer("char", corpus), {"seconds": time.perf_counter() - t0}
    kind, _, n = spec.partition(":")
    if kind != "bpe" or not n.isdigit():
        raise UserError(f"tokenizer spec must be 'char' or 'bpe:N', not {spec!r}")
    return train_on_corpus(corpus, int(n), progress=progress)


def calibrate_steps(cfg, seconds: float, probe_steps: int = 12, data=None) -> tuple[int, float]:
    """Steps that fit in ``seconds`` of training: time ``probe_steps`` real optimizer steps of this
    config (in a scratch run folder, silently; ``data`` as for ``train``) and divide; over
    SHORT_BUDGET, plan for SUSTAINED_SLOWDOWN. Returns (steps, planned seconds per step)."""
    import dataclasses
    import tempfile

    from gptforge.train import Logger, train

    with tempfile.TemporaryDirectory(prefix="gptforge-calib-") as tmp:
        probe = dataclasses.replace(cfg, out=str(Path(tmp) / "run"), max_steps=probe_steps, max_time=0.0,
                                    eval_interval=10**9, eval_tokens=cfg.block_size, compile=False)
        times = train(probe, logger=Logger("none"), data=data)["step_times_s"]
    per_step = sorted(times[2:])[len(times[2:]) // 2]  # median; skip warm-up steps
    if seconds > SHORT_BUDGET:
        per_step *= SUSTAINED_SLOWDOWN
    return max(1, int(seconds / per_step)), per_step


@dataclass
class SpeedrunConfig:
    """The settings of `gptforge speedrun` (besides pretraining and model overrides)."""

    preset: str = setting("cpu", "recipe", choices=tuple(RECIPES))
    corpus: str = setting("shakespeare",
                          "'shakespeare' (built in), a .txt/.jsonl file, a directory or a glob")
    time: float | None = setting(None, "training budget in seconds; none -> the preset's (cpu: 300)",
                                 gt=0, le=7 * 86400)
    out: str = setting("", "run folder; empty -> runs/speedrun-<preset>-<YYYYmmdd-HHMMSS>", metavar="DIR")
    samples: int = setting(3, "samples in the report", ge=0, le=100)
    seed: int = setting(1337, "seed of the model init, batches and samples", ge=0, le=2**32 - 1)

    def __post_init__(self):
        check(self, "speedrun")
        if not self.out:
            self.out = str(Path("runs") / f"speedrun-{self.preset}-{datetime.now():%Y%m%d-%H%M%S}")


def plan(sr: SpeedrunConfig, train_overrides: dict | None = None, progress: bool = True):
    """The pretraining config a speedrun will use (before calibration), checked up front so that a
    bad setting fails before any stage runs.

    Raises:
        UserError: a bad override, or a GPU preset on a machine without CUDA.
    """
    import torch

    from gptforge.data.corpus import open_corpus
    from gptforge.train import make_config

    recipe = RECIPES[sr.preset]
    out_dir = Path(sr.out)
    budget = sr.time if sr.time is not None else recipe.time
    cfg = make_config(recipe.config(budget), {"data": str(out_dir / "data"), "out": str(out_dir / "pretrain"),
                                              "seed": sr.seed, "progress": "auto" if progress else "none"},
                      train_overrides or {})
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"preset {sr.preset} needs a CUDA GPU; none is available (try --preset cpu)")
    open_corpus(sr.corpus)  # a missing corpus fails here, not after a stage
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory; choose another --out")
    if (out_dir / "pretrain").exists():
        raise UserError(f"{out_dir} already holds a speedrun; choose another --out or delete it")
    return cfg, budget


def speedrun(sr: SpeedrunConfig, train_overrides: dict | None = None, progress: bool = True) -> Path:
    """Run every stage of ``sr.preset`` on ``sr.corpus`` into folder ``sr.out``; return the report's path.

    ``train_overrides``: TrainConfig fields (``model`` for the model's) over the recipe's.
    ``progress``: show progress (bars on a terminal, log lines otherwise); False is silent but for
    the stage headers.

    Raises:
        UserError: bad settings, a bad corpus, or an ``out`` folder that already holds a run.
    """
    from gptforge.data.shards import prepare
    from gptforge.engine import generate, load_for_inference
    from gptforge.train import make_config, train
    from gptforge.train.plot import plot_runs, read_metrics

    cfg, budget = plan(sr, train_overrides, progress)
    recipe_name, corpus, seed, samples = sr.preset, sr.corpus, sr.seed, sr.samples
    recipe = RECIPES[recipe_name]
    out_dir = Path(sr.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.time()

    _say(f"[1/5] tokenizer ({recipe.tokenizer}) on {corpus}")
    bars = progress and sys.stderr.isatty()  # tokenizer and shard bars; pretraining logs lines otherwise
    tok, tok_info = build_tokenizer(recipe.tokenizer, corpus, bars)
    tok.save(out_dir / "tokenizer.json")

    _say(f"[2/5] token shards -> {out_dir / 'data'}")
    meta = prepare(corpus, tok, out_dir / "data", progress=bars)

    per_step = None
    if budget:
        _say(f"[3/5] calibrating: how many steps fit in {budget:.0f} s of training")
        steps, per_step = calibrate_steps(cfg, budget)
        cfg = make_config(cfg.to_dict(), {"max_steps": steps, "max_time": budget * 1.5 + 30})
        _say(f"      {per_step * 1000:.1f} ms/step -> {steps} steps")
    _say(f"[3/5] pretraining -> {cfg.out}")
    summary = train(cfg)
    if summary["stopped_by"] == "signal":  # Ctrl-C / SIGTERM: the run is saved; stop here, not at the end
        _say(f"interrupted: pretraining saved at step {summary['step']} in {cfg.out}; "
             f"continue it with gptforge pretrain --resume {cfg.out}")
        raise KeyboardInterrupt

    _say("[4/5] loss curves and samples")
    plot_runs([cfg.out], out_dir / "loss.png")
    model, tok2, state = load_for_inference(cfg.out, "best")
    # start where documents start: after <|endoftext|> if the data has separators, else a newline
    multi_doc = meta["splits"]["train"]["documents"] > 1 and tok2.eot_id is not None
    start = [tok2.eot_id] if multi_doc else tok2.encode("\n")
    stops = [tok2.eot_id] if tok2.eot_id is not None else []
    rows = generate(model, [start] * samples, recipe.sample_tokens, temperature=0.8, top_k=50, seed=seed,
                    stop_tokens=stops)
    texts = [tok2.decode(r) for r in rows]
    atomic_write(out_dir / "samples.txt",
        "".join(f"--- sample {i + 1} ---\n{t}\n\n" for i, t in enumerate(texts)))

    _say("[5/5] report")
    metrics = read_metrics(cfg.out)
    report = _report(recipe_name, recipe, corpus, tok, tok_info, meta, cfg, summary, state, metrics, texts,
                     per_step, budget, time.time() - t_all)
    path = atomic_write(out_dir / "report.md", report)
    summary.pop("step_times_s")
    write_json(out_dir / "summary.json", _finite(
        {"recipe": recipe_name, "corpus": corpus, **summary, "best_checkpoint": state.path,
         "best_val_loss": state.val_loss, "best_val_bpb": state.val_bpb,
         "total_time_s": time.time() - t_all}))
    return path


def _finite(d: dict) -> dict:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def _fmt(x, spec=".4f", none="-"):
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _report(name, recipe, corpus, tok, tok_info, meta, cfg, summary, state, metrics, texts, per_step,
            budget, total_s) -> str:
    from gptforge.train.config import format_config

    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    evals = [r for r in metrics if r.get("val_loss") is not None]
    mfus = [r["mfu"] for r in metrics if r.get("mfu") is not None]
    tok_s = [r["tokens_per_s"] for r in metrics if r.get("tokens_per_s")]
    median = lambda xs: sorted(xs)[len(xs) // 2] if xs else None
    lines = [
        f"# gptforge speedrun: `{name}`",
        "",
        f"{recipe.description}.",
        "",
        "| | |",
        "|---|---|",
        f"| corpus | `{corpus}` ({meta['corpus']['bytes']:,} bytes, "
        f"sha256 `{meta['corpus']['sha256'][:16]}…`) |",
        f"| tokenizer | {tok.kind}, vocab {tok.vocab_size:,}, trained in {tok_info['seconds']:.1f} s |",
        f"| train split | {tr['tokens']:,} tokens, {tr['bytes']:,} bytes "
        f"({tr['bytes'] / tr['tokens']:.2f} bytes/token) |",
        f"| val split | {va['tokens']:,} tokens, {va['bytes']:,} bytes |",
        f"| model | {cfg.arch} ({cfg.preset}), depth {cfg.depth}, {summary['num_params']:,} parameters |",
        f"| steps | {summary['step']:,} ({summary['stopped_by']}), B={cfg.batch_size}, T={cfg.block_size} |",
        f"| tokens seen | {summary['tokens']:,} |",
        f"| training time | {summary['train_time_s']:.1f} s in optimizer steps, "
        f"{summary['time_s']:.1f} s with "
        f"evaluation and checkpoints |",
        f"| whole speedrun | {total_s:.1f} s |",
        f"| throughput | {_fmt(median(tok_s), ',.0f')} tokens/s (median step), "
        f"MFU {_fmt(median(mfus), '.1%')} |",
        f"| final val loss | {_fmt(summary['val_loss'])} nats/token |",
        f"| final val bpb | {_fmt(summary['val_bpb'])} bits/byte |",
        f"| best checkpoint | `{state.path}` (val loss {_fmt(state.val_loss)}, "
        f"bpb {_fmt(state.val_bpb)}) |",
        "",
    ]
    if budget:
        lines += [f"Time budget {budget:.0f} s: calibrated at {per_step * 1000:.0f} ms/step.", ""]
    lines += ["## Loss", "", "![loss curves](loss.png)", "",
              "| step | tokens | train time (s) | val loss | val bpb |",
              "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['tokens']:,} | {r.get('train_time_s', 0):.1f} | {r['val_loss']:.4f} | "
              f"{_fmt(r.get('val_bpb'))} |" for r in evals]
    lines += ["", "## Samples", "", "Temperature 0.8, top-k 50, from the best checkpoint.", ""]
    for i, t in enumerate(texts):
        lines += [f"### Sample {i + 1}", "", "```text", t.rstrip("\n"), "```", ""]
    lines += ["## Config", "", "```text", format_config(cfg), "```", ""]
    return "\n".join(lines)
