"""`gptforge speedrun`: raw text to an assistant that uses a calculator, in one command, with a report.

Stages, each writing into the run folder ``OUT``::

    data      OUT/tokenizer.json, OUT/data/   a tokenizer trained on the train split, token shards
    pretrain  OUT/pretrain/                   the base model (metrics.jsonl, ckpt/, config.json)
    sft       OUT/sft/                        the base finetuned on conversations with tool calls
    rl        OUT/rl/                         the SFT model tuned by policy gradient on arithmetic and
                                              letter counting, rewarded by the tasks' checkers
    eval      OUT/{pretrain,sft,rl}/eval.json bits per byte, a CORE subset, chat and tool tasks
    report    OUT/report.md                   base vs SFT vs RL, loss curves, samples, a chat transcript
              (+ loss.png, compare.png, samples.txt, chat.txt, summary.json)

Each stage can be skipped (``skip``) or run alone (``only``) on what earlier stages left in OUT.
The SFT stage needs a tokenizer with the chat special tokens (the BPE recipes have them; a
char-level recipe skips it, and says so).

A recipe is a tokenizer plus a pretraining config (``RECIPES``). Budgets (``time``, ``sft_time``)
are the *wall-clock* seconds of their stage, evaluation and checkpoints included: the number of
steps comes from a short calibration run (so the learning-rate schedule and its warmdown end in
time), planned with room for the evaluations, and the stage stops at its budget in any case. RL
(``rl_time``) trains at a constant learning rate, so it needs no plan: it takes steps until its
budget, counted from the stage's start, is spent, then evaluates and saves. The
report gives both the wall time and the time in optimizer steps (what the benchmarks compare).
The budget also sizes the model (``Recipe.tiers``): the `cpu` recipe trains depth 2 x 128 up to a
minute, 4 x 192 up to five minutes and 4 x 192 with dropout 0.1 beyond, each the best measured there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gptforge.config import check, setting
from gptforge.errors import UserError
from gptforge.io import atomic_write, read_json, write_json

# The stages' modules (tokenizer training, shards, torch, training, evaluation) are imported inside
# the functions that run them: `gptforge speedrun --help` builds its flags from SpeedrunConfig here
# and stays fast without torch.

@dataclass
class Recipe:
    """A tokenizer and a pretraining config.

    tokenizer: "char" (nanoGPT's: every character of the corpus, no special tokens) or "bpe:N"
        (byte-level BPE with vocabulary N trained on the train split).
    train: TrainConfig fields (see gptforge.train.config).
    time: default pretraining budget in wall-clock seconds (None: the config's max_steps decides).
    sft_time: default SFT budget in wall-clock seconds (None: SFT_DEFAULTS' max_steps).
    rl_time: default RL budget in wall-clock seconds (None: RL_DEFAULTS' max_steps).
    tiers: ``(seconds, overrides)`` pairs, shortest first: a budget of at most ``seconds`` trains
        ``train`` with the first such ``overrides`` (the model grows with the budget).
    """

    description: str
    tokenizer: str
    train: dict
    time: float | None = None
    sft_time: float | None = None
    rl_time: float | None = None
    sample_tokens: int = 300
    tiers: tuple[tuple[float, dict], ...] = ()

    def config(self, budget: float | None) -> dict:
        """The pretraining settings for a time budget in seconds (None: the recipe's default)."""
        budget = self.time if budget is None else budget
        for seconds, over in self.tiers:
            if budget and budget <= seconds:
                model = {**self.train.get("model", {}), **over.get("model", {})}
                return {**self.train, **over, "model": model}
        return dict(self.train)


# nanoGPT's README CPU recipe for shakespeare_char, as its train.py defaults make it: GPT-2 blocks
# without biases, tied embeddings, AdamW betas (0.9, 0.99), wd 0.1 on >= 2-D weights, grad clip 1.
NANOGPT_CPU = dict(
    arch="gpt", preset="gpt2", depth=4, model={"n_embd": 128, "n_head": 4, "bias": False, "dropout": 0.0},
    block_size=64, batch_size=12, max_steps=2000, optimizer="adamw", lr=1e-3, min_lr_frac=0.1,
    warmup_steps=100, beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0, schedule="cosine",
    dtype="float32", eval_interval=250, eval_tokens=0)

# Chosen by measurement on a 2-core CPU (bench/sweep_cpu.py and speedrun_cpu.py; results in
# bench/README.md): a small modern GPT, Muon on the hidden matrices, AdamW at 1e-2 on embeddings/head,
# WSD schedule, weight decay 0.3 on every matrix. Tiny shakespeare is small (318k tokens), so budgets
# past a minute see it several times and regularisation decides: decay 0.3 took the 600 s run from
# 2.221 to 2.099 bits per byte and the 100 s run from 2.273 to 2.235 (12 s: no change). Past five
# minutes (four or more passes) dropout 0.1 too (CPU_TIERS).
CPU = dict(
    arch="gpt", preset="modern", depth=4, model={"n_embd": 192, "n_head": 3, "dropout": 0.1}, block_size=128,
    batch_size=16, optimizer="muon", lr=1e-2, muon_lr=0.02, weight_decay=0.3, beta1=0.9, beta2=0.95,
    grad_clip=1.0, schedule="wsd", warmdown_frac=0.4, min_lr_frac=0.0, warmup_steps=20,
    # dtype auto: bf16 autocast only where the CPU has bf16 instructions (elsewhere emulated, slower)
    dtype="auto", eval_interval=100, eval_tokens=65536)  # the eval stage scores the whole val split
# Under a minute, a shallower, narrower model on smaller batches takes more steps and wins; up to five
# minutes (one to four passes over the data) no dropout.
SHORT_BUDGET = 60.0  # seconds
CPU_TIERS = ((SHORT_BUDGET, dict(depth=2, model={"n_embd": 128, "n_head": 2, "dropout": 0.0}, batch_size=8)),
             (300.0, dict(model={"dropout": 0.0})))

# SFT 150 s rather than 120 (better arithmetic); RL 60 s on arithmetic, letter counting and the social
# prompts, rewarded only for answers a right calculator call produced (bench/README.md, "The SFT/RL split").
RECIPES: dict[str, Recipe] = {
    "cpu": Recipe("small modern GPT (RoPE, RMSNorm, ReLU^2, QK-norm) with Muon, BPE tokens; minutes on a "
                  "laptop CPU", "bpe:2048", CPU, time=240, sft_time=150, rl_time=60, tiers=CPU_TIERS),
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


def probe_step_time(cfg, probe_steps: int = 12, data=None, max_time: float = 0.0) -> tuple[float, int]:
    """(seconds per optimizer step, tokens per step) of this config: the median of ``probe_steps`` real
    steps, warm-up left out, run in a scratch folder silently (``data`` as for ``train``), stopping
    early after ``max_time`` seconds (0: no limit). Sustained steps on a CPU can differ from it
    noticeably (bench/README.md): `timed` lets a wsd run correct the plan."""
    from gptforge.train import Logger, train

    with tempfile.TemporaryDirectory(prefix="gptforge-calib-") as tmp:
        probe = dataclasses.replace(cfg, out=str(Path(tmp) / "run"), max_steps=probe_steps, max_time=max_time,
                                    eval_interval=10**9, eval_tokens=cfg.block_size, compile=False)
        summary = train(probe, logger=Logger("none"), data=data)
    times = summary["step_times_s"][2:] or summary["step_times_s"] or [max_time]  # cut short: what ran
    per_step = sorted(times)[len(times) // 2]
    return per_step, summary["tokens"] // max(summary["step"], 1)


def calibrate_steps(cfg, seconds: float, probe_steps: int = 12, data=None) -> tuple[int, float]:
    """Steps whose optimizer time is ``seconds`` (training time only, what the benchmarks compare;
    `_budgeted` plans a stage's wall time). Returns (steps, probed seconds per step)."""
    per_step, _ = probe_step_time(cfg, probe_steps, data)
    return max(1, int(seconds / per_step)), per_step


def timed(cfg, steps: int, seconds: float):
    """``cfg`` planned at ``steps`` steps; a wsd schedule (without decay_steps) also gets
    ``schedule_time = seconds``, so the run re-plans its length from the step times it measures."""
    from gptforge.train import make_config
    from gptforge.train.optim import replannable

    timing = {"schedule_time": seconds} if replannable(cfg) else {}
    return make_config(cfg.to_dict(), {"max_steps": steps}, timing)


def fit_budget(seconds: float, per_step: float, tokens_per_step: int, eval_tokens: int,
               eval_interval: int) -> tuple[int, int]:
    """(steps, eval tokens) for ``seconds`` of wall time: evaluations (at step 0, every
    ``eval_interval`` steps and at the end, each a forward pass at a third of a training step's
    cost per token) get at most 10% of the budget, their size cut to fit (never under one step's
    tokens); 5% is left for starting up and saving; the steps take the rest (at least 1)."""
    per_token_eval = per_step / max(tokens_per_step, 1) / 3
    n_evals = 2 + int(seconds / per_step) // eval_interval
    eval_tokens = max(tokens_per_step, min(eval_tokens, int(0.10 * seconds / n_evals / per_token_eval)))
    eval_s = eval_tokens * per_token_eval
    steps = int((0.95 * seconds - 2 * eval_s) / (per_step + eval_s / eval_interval))
    return max(1, steps), eval_tokens


STAGES = ("data", "pretrain", "sft", "rl", "eval", "report")
SFT_DATA = "arithmetic:20000,spelling:10000,identity,smalltalk"
RL_TASKS = "arithmetic,letter_count,social"
RL_EVAL_ITEMS = 4  # held-out prompts per task in RL's own pass@k evaluations (the eval stage scores more)
# SFT of a RoPE model at this multiple of its pretraining block size, so that the chat model keeps
# several turns (cpu recipe: 128 -> 256 tokens; its cost in bench/README.md)
SFT_CONTEXT = 2
CORE_SUBSET = "arc_easy,piqa,winogrande,copa,lambada_openai"  # quick, and the ones small models move on
CHAT_TASKS = "arithmetic,letter_count,social,chat:arc_easy"
FILE_FREE_TASKS = "arithmetic,letter_count,social"  # generated: they run without the evaluation data
# one prompt of each kind the assistant is trained for, each in a new conversation (issue 29)
TRANSCRIPT = ("What is 123 + 456?", "How many r's are in strawberry?", "Hello! Who are you?",
              "Write a short poem about the sea.")


@dataclass
class SpeedrunConfig:
    """The settings of `gptforge speedrun` (besides pretraining and model overrides)."""

    preset: str = setting("cpu", "recipe", choices=tuple(RECIPES))
    corpus: str = setting("shakespeare",
                          "'shakespeare' (built in), a .txt/.jsonl file, a directory or a glob")
    time: float | None = setting(None, "pretraining budget in wall-clock seconds (evaluation and checkpoints "
                                       "included); none -> the preset's (cpu: 240) unless max_steps is set",
                                 gt=0, le=7 * 86400)
    sft_time: float | None = setting(None, "SFT budget in wall-clock seconds; none -> the preset's "
                                           "(cpu: 150)",
                                     gt=0, le=7 * 86400)
    sft_steps: int | None = setting(None, "SFT optimizer steps instead of a time budget", ge=1, le=10**9)
    sft_data: str = setting(SFT_DATA, "SFT conversations (as gptforge sft --data)")
    rl_time: float | None = setting(None, "RL budget in wall-clock seconds; none -> the preset's (cpu: 60)",
                                    gt=0, le=7 * 86400)
    rl_steps: int | None = setting(None, "RL optimizer steps instead of a time budget", ge=1, le=10**9)
    eval_limit: int = setting(50, "items per task in the eval stage", ge=1, le=100_000)
    out: str = setting("", "run folder; empty -> runs/speedrun-<preset>-<YYYYmmdd-HHMMSS>", metavar="DIR")
    only: str = setting("", "run this stage alone on what OUT holds (eval: then the report): "
                        + ", ".join(STAGES), metavar="STAGE")
    skip: str = setting("", "comma-separated stages to leave out", metavar="STAGES")
    samples: int = setting(3, "samples in the report", ge=0, le=100)
    seed: int = setting(1337, "seed of the model init, batches and samples", ge=0, le=2**32 - 1)

    def __post_init__(self):
        check(self, "speedrun")
        skip = [x.strip() for x in self.skip.split(",") if x.strip()]
        for name in skip + ([self.only] if self.only else []):
            if name not in STAGES:
                raise UserError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        if self.only and skip:
            raise UserError("--only runs one stage; leave out --skip")
        if self.only and not self.out:
            raise UserError(f"--only {self.only}: which run? give its folder with --out")
        if not self.out:
            self.out = str(Path("runs") / f"speedrun-{self.preset}-{datetime.now():%Y%m%d-%H%M%S}")

    def stages(self) -> list[str]:
        """The stages to run, in order (``only`` eval refreshes the report too, which shows its figures)."""
        if self.only:
            return [self.only, "report"] if self.only == "eval" else [self.only]
        skip = {x.strip() for x in self.skip.split(",")}
        if "sft" in skip:  # RL tunes the SFT model: without one there is nothing to tune
            skip.add("rl")
        return [s for s in STAGES if s not in skip]


def plan(sr: SpeedrunConfig, train_overrides: dict | None = None, progress: bool = True):
    """The pretraining config a speedrun will use (before calibration), checked up front so that a
    bad setting fails before any stage runs.

    Raises:
        UserError: a bad override, a GPU preset on a machine without CUDA, a stage whose output
            exists already, or one whose input is missing.
    """
    import torch

    from gptforge.data.corpus import open_corpus
    from gptforge.train import make_config

    recipe = RECIPES[sr.preset]
    out_dir = Path(sr.out)
    budget = sr.time
    if budget is None and "max_steps" not in (train_overrides or {}):  # a step count given wins
        budget = recipe.time
    base, over = recipe.config(budget), dict(train_overrides or {})
    model = over.get("model") or {}
    if "n_embd" in model and "n_head" not in model and "n_head" in base.get("model", {}):
        # the recipe's heads are 64 wide (its head count would rarely divide another width): keep them so
        over["model"] = {**model, "n_head": max(1, model["n_embd"] // 64)}
    cfg = make_config(base, {"data": str(out_dir / "data"), "out": str(out_dir / "pretrain"),
                             "seed": sr.seed, "progress": "auto" if progress else "none"}, over)
    stages = sr.stages()
    if "pretrain" in stages and cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"preset {sr.preset} needs a CUDA GPU; none is available (try --preset cpu)")
    if "data" in stages:
        open_corpus(sr.corpus)  # a missing corpus fails here, not after a stage
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory; choose another --out")
    for stage in ("data", "pretrain", "sft", "rl"):
        if stage in stages and (out_dir / stage).exists():
            raise UserError(f"{out_dir} already holds a speedrun's {stage} stage ({out_dir / stage}); choose "
                            "another --out, delete it, or run the later stages with --only")
    # (stage, the stage that makes its input, that input in OUT); without the tokenizer the SFT stage
    # would skip, saying it has no chat tokens
    needed = (("pretrain", "data", "data"), ("sft", "pretrain", "pretrain"), ("rl", "sft", "sft"),
              ("eval", "pretrain", "pretrain"), ("report", "pretrain", "pretrain"),
              ("sft", "data", "tokenizer.json"))
    for stage, needs, path in needed:
        if stage in stages and needs not in stages and not (out_dir / path).exists():
            raise UserError(f"the {stage} stage needs {out_dir / path}; run the {needs} stage first")
    return cfg, budget


def speedrun(sr: SpeedrunConfig, train_overrides: dict | None = None, progress: bool = True) -> Path | None:
    """Run the stages of ``sr`` (module docstring) on ``sr.corpus`` into folder ``sr.out``; return the
    report's path (the report may be from an earlier run when the report stage is skipped), or None
    when the folder has no report.

    ``train_overrides``: TrainConfig fields (``model`` for the model's) over the recipe's.
    ``progress``: show progress (bars on a terminal, log lines otherwise); False is silent but for
    the stage headers.

    Raises:
        UserError: bad settings, a bad corpus, or an ``out`` folder that already holds a stage.
        KeyboardInterrupt: Ctrl-C / SIGTERM during training (the run is saved first).
    """
    cfg, budget = plan(sr, train_overrides, progress)
    recipe = RECIPES[sr.preset]
    out_dir = Path(sr.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = sr.stages()
    t_all = time.time()
    record = out_dir / "speedrun.json"  # what earlier runs of stages recorded there (for --only)
    info = read_json(record, what="speedrun record (delete it to start afresh)") if record.is_file() else {}
    run = {"data": lambda: _stage_data(sr, recipe, out_dir, progress),
           "pretrain": lambda: _stage_pretrain(cfg, budget),
           "sft": lambda: _stage_sft(sr, recipe, out_dir, progress),
           "rl": lambda: _stage_rl(sr, recipe, out_dir, progress),
           "eval": lambda: _stage_eval(sr, out_dir, progress),
           "report": lambda: _stage_report(sr, recipe, out_dir, info)}
    for i, stage in enumerate(stages, 1):
        t0 = time.time()
        _say(f"[{i}/{len(stages)}] {stage}")
        info[stage] = run[stage]()
        info.setdefault("stage_s", {})[stage] = time.time() - t0
        write_json(record, info)
    _say(f"done in {time.time() - t_all:.0f} s")
    talk, base_dir = _chat_run(out_dir), out_dir / "pretrain"
    if talk:  # hints only for what the folder holds (--only data trains nothing)
        _say(f"talk to it:  gptforge chat --ckpt {talk}\n"
             f"serve it:    gptforge serve --ckpt {talk}   (OpenAI API and a chat page on http://127.0.0.1:8000)")
    elif (base_dir / "ckpt").exists():
        _say(f"sample from it:  gptforge sample --ckpt {base_dir} --prompt 'ROMEO:'")
    report = out_dir / "report.md"
    return report if report.is_file() else None


def _chat_run(out_dir: Path) -> Path | None:
    """The last chat model of the run: OUT/rl when it was trained, else OUT/sft, else None."""
    return next((out_dir / n for n in ("rl", "sft") if (out_dir / n / "ckpt").exists()), None)


def _stage_data(sr: SpeedrunConfig, recipe: Recipe, out_dir: Path, progress: bool) -> dict:
    from gptforge.data.shards import prepare

    bars = progress and sys.stderr.isatty()  # tokenizer and shard bars; pretraining logs lines otherwise
    _say(f"      tokenizer ({recipe.tokenizer}) on {sr.corpus}")
    tok, tok_info = build_tokenizer(recipe.tokenizer, sr.corpus, bars)
    tok.save(out_dir / "tokenizer.json")
    _say(f"      token shards -> {out_dir / 'data'}")
    meta = prepare(sr.corpus, tok, out_dir / "data", progress=bars)
    return {"corpus": sr.corpus, "tokenizer_s": tok_info["seconds"], "meta": meta}


def _budgeted(cfg, budget: float | None, data=None, what: str = "training"):
    """``(cfg, seconds per step, started)``: ``cfg`` with max_steps planned for a wall-clock ``budget``
    and max_time set to it, counted from ``started`` (before the calibration probe, which counts:
    it takes at most a quarter of the budget, `fit_budget` plans what is left; pass ``started`` to
    ``train``); a wsd schedule also gets the steps' share of the budget as ``schedule_time``
    (`timed`). No budget: ``(cfg, None, None)``."""
    from gptforge.train import make_config

    if not budget:
        return cfg, None, None
    started = time.time()
    _say(f"      calibrating: how many {what} steps fit in {budget:.0f} s")
    per_step, tokens_per_step = probe_step_time(cfg, data=data, max_time=budget / 4)
    eval_tokens = cfg.eval_tokens or (data.eval_tokens if data is not None else 10**9)
    steps, eval_tokens = fit_budget(max(0.0, budget - (time.time() - started)), per_step, tokens_per_step,
                                    eval_tokens, cfg.eval_interval)
    cfg = make_config(cfg.to_dict(), {"max_time": budget, "eval_tokens": eval_tokens})
    cfg = timed(cfg, steps, steps * per_step)  # the steps' share of the budget
    _say(f"      {per_step * 1000:.1f} ms/step -> {steps} steps (evaluating {eval_tokens:,} tokens "
         f"every {cfg.eval_interval} steps)" + ("; the count follows the measured step times until the "
                                                "warmdown" if cfg.schedule_time else ""))
    return cfg, per_step, started


def _trained(cfg, what: str, command: str, data=None, started: float | None = None) -> dict:
    """A stage's training (``train(cfg, data=data, started=started)``): its summary without the step
    times, and ``wall_s``, the seconds it took; after Ctrl-C / SIGTERM (the run is saved) it says how
    to continue and raises KeyboardInterrupt, so the speedrun stops here, not at the end."""
    from gptforge.train import train

    t0 = time.time()
    summary = train(cfg, data=data, started=started)
    if summary["stopped_by"] == "signal":
        _say(f"interrupted: {what} saved at step {summary['step']} in {cfg.out}; "
             f"continue it with gptforge {command} --resume {cfg.out}")
        raise KeyboardInterrupt
    summary.pop("step_times_s")
    return {**summary, "wall_s": time.time() - t0}


def _stage_pretrain(cfg, budget: float | None) -> dict:
    cfg, per_step, started = _budgeted(cfg, budget)
    _say(f"      pretraining -> {cfg.out}")
    return {**_trained(cfg, "pretraining", "pretrain", started=started), "budget_s": budget,
            "per_step_s": per_step}


def _stage_sft(sr: SpeedrunConfig, recipe: Recipe, out_dir: Path, progress: bool) -> dict:
    from gptforge.chat.render import ChatTokens
    from gptforge.chat.sft import sft_config, sft_run_data
    from gptforge.checkpoint import read_trainer_state
    from gptforge.tokenizer import load_tokenizer
    from gptforge.train import make_config

    try:
        ChatTokens(load_tokenizer(out_dir / "tokenizer.json"))
    except UserError:
        _say(f"      skipped: the {recipe.tokenizer} tokenizer has no chat special tokens")
        return {"skipped": "the tokenizer has no chat tokens"}
    cfg = sft_config(out_dir / "pretrain", {"data": sr.sft_data, "out": str(out_dir / "sft"),
                                            "eval_tokens": 16384, "progress": "auto" if progress else "none"})
    # a RoPE model's context grows for the chat (SFT_CONTEXT); a table of learned positions cannot
    if read_trainer_state(Path(cfg.init_from)).model_config.get("positional") == "rope":
        cfg = make_config(cfg.to_dict(), {"block_size": SFT_CONTEXT * cfg.block_size})
    data, tr, te = sft_run_data(cfg)
    _say(f"      {tr.conversations:,} conversations ({sr.sft_data}) in {tr.rows:,} rows, "
         f"{tr.cropped} cropped")
    budget = sr.sft_time if sr.sft_time is not None else recipe.sft_time
    if sr.sft_steps is not None:
        cfg, budget = make_config(cfg.to_dict(), {"max_steps": sr.sft_steps}), None
    cfg, per_step, started = _budgeted(cfg, budget, data, "SFT")
    _say(f"      SFT -> {cfg.out}")
    return {**_trained(cfg, "SFT", "sft", data, started), "budget_s": budget, "per_step_s": per_step,
            "conversations": tr.conversations, "cropped": tr.cropped}


def _stage_rl(sr: SpeedrunConfig, recipe: Recipe, out_dir: Path, progress: bool) -> dict:
    """The SFT model tuned by policy gradient on the verifiable tasks (gptforge.finetune.rl), for
    ``rl_time`` seconds of wall clock from the stage's start (or ``rl_steps`` steps)."""
    from gptforge.finetune.rl import rl_config, rl_run_data
    from gptforge.train import make_config

    if not (out_dir / "sft" / "ckpt").exists():
        _say("      skipped: no SFT model to tune")
        return {"skipped": "no SFT model"}
    started = time.time()
    budget = sr.rl_time if sr.rl_time is not None else recipe.rl_time
    cfg = rl_config(out_dir / "sft", {"data": RL_TASKS, "out": str(out_dir / "rl"), "eval_interval": 10**9,
                                      "rl_eval_items": RL_EVAL_ITEMS,
                                      "progress": "auto" if progress else "none"})
    if sr.rl_steps is not None:
        cfg, budget = make_config(cfg.to_dict(), {"max_steps": sr.rl_steps}), None
    elif budget:
        cfg = make_config(cfg.to_dict(), {"max_time": budget, "max_steps": 10**9})
    data = rl_run_data(cfg)
    _say(f"      RL on {RL_TASKS} ({cfg.batch_size // cfg.rl_samples} prompts x {cfg.rl_samples} samples "
         f"per step" + (f", {budget:.0f} s" if budget else f", {cfg.max_steps} steps") + f") -> {cfg.out}")
    # wall_s counts from the stage's start, the reading of the rollout tasks included
    return {**_trained(cfg, "RL", "rl", data, started if budget else None), "budget_s": budget,
            "wall_s": time.time() - started}


def _stage_eval(sr: SpeedrunConfig, out_dir: Path, progress: bool) -> dict:
    """Every model on the same tasks: bits per byte on the whole val split, a CORE subset, and the
    chat and tool tasks (a base model has never seen a conversation: its chat scores show what SFT
    buys)."""
    from gptforge.chat.render import ChatTokens
    from gptforge.engine import load_for_inference
    from gptforge.eval.files import default_data_dir
    from gptforge.eval.suite import evaluate, format_table, resolve_tasks

    have_files = default_data_dir().is_dir()
    if not have_files:  # a user's clone that never ran `gptforge data evals`
        _say(f"      no evaluation data at {default_data_dir()} (gptforge data evals): "
             "only the tasks that need no files")
    out = {}
    for name in ("pretrain", "sft", "rl"):
        run = out_dir / name
        if not (run / "ckpt").exists():
            continue
        model, tok, _ = load_for_inference(str(run), "best")
        tasks = [CORE_SUBSET] if have_files else []
        with contextlib.suppress(UserError):  # the chat tasks need the chat special tokens
            ChatTokens(tok)
            tasks.append(CHAT_TASKS if have_files else FILE_FREE_TASKS)
        if tok.kind == "char":  # its table holds the corpus's characters only: task prompts need more
            _say("      a char-level tokenizer cannot encode the tasks' prompts: bits per byte only")
            tasks = []
        spec = ",".join(tasks + ["bpb"])
        _say(f"      {name}: {spec} (up to {sr.eval_limit} items per task)")
        res = evaluate(model, tok, resolve_tasks(spec), bpb_data=out_dir / "data", limit=sr.eval_limit,
                       out_dir=run)
        write_json(run / "eval.json", res)
        if progress:
            _say("\n".join("      " + line for line in format_table(res).splitlines()))
        out[name] = {"core": res["core"], "chatcore": res["chatcore"], "bpb": res["bpb"]["bpb"],
                     "seconds": res["seconds"]}
    return out


def _stage_report(sr: SpeedrunConfig, recipe: Recipe, out_dir: Path, info: dict) -> dict:
    from gptforge.chat.assistant import respond
    from gptforge.engine import generate, load_for_inference
    from gptforge.eval.report import compare_markdown, compare_png, run_card
    from gptforge.train.config import TrainConfig
    from gptforge.train.plot import plot_runs, read_metrics

    runs = [out_dir / n for n in ("pretrain", "sft", "rl") if (out_dir / n / "metrics.jsonl").exists()]
    plot_runs([str(r) for r in runs], out_dir / "loss.png")
    cards = [run_card(r) for r in runs]
    compare_png(cards, out_dir / "compare.png")
    model, tok, state = load_for_inference(str(out_dir / "pretrain"), "best")
    meta = (info.get("data") or {}).get("meta") or read_json(out_dir / "data" / "meta.json",
                                                             "gptforge.shards", what="shard metadata")
    multi_doc = meta["splits"]["train"]["documents"] > 1 and tok.eot_id is not None
    start = [tok.eot_id] if multi_doc else tok.encode("\n")  # where documents start
    stops = [tok.eot_id] if tok.eot_id is not None else []
    rows = generate(model, [start] * sr.samples, recipe.sample_tokens, temperature=0.8, top_k=50,
                    seed=sr.seed, stop_tokens=stops) if sr.samples else []
    texts = [tok.decode(r) for r in rows]
    atomic_write(out_dir / "samples.txt",
                 "".join(f"--- sample {i + 1} ---\n{t}\n\n" for i, t in enumerate(texts)))
    transcript, chat_run = None, _chat_run(out_dir)
    if chat_run is not None:
        chat_model, chat_tok, _ = load_for_inference(str(chat_run), "best")
        transcript = ""
        for prompt in TRANSCRIPT:
            pieces = respond(chat_model, chat_tok, [{"role": "user", "content": prompt}], 64, temperature=0)
            transcript += f"you> {prompt}\nassistant> {''.join(p.shown() for p in pieces)}\n\n"
        atomic_write(out_dir / "chat.txt", transcript)
    cfg = TrainConfig(**read_json(out_dir / "pretrain" / "config.json", what="run config"))
    pre = info.get("pretrain") or {}
    text = _report(sr.preset, recipe, meta, cfg, pre, state, read_metrics(out_dir / "pretrain"), texts,
                   compare_markdown(cards), transcript, info, chat_run.name if chat_run else None)
    atomic_write(out_dir / "report.md", text)
    write_json(out_dir / "summary.json",
               {"recipe": sr.preset, "corpus": (info.get("data") or {}).get("corpus", sr.corpus), **pre,
                "best_checkpoint": state.path, "best_val_loss": state.val_loss, "best_val_bpb": state.val_bpb,
                "sft": info.get("sft"), "rl": info.get("rl"), "eval": info.get("eval"),
                "stage_s": info.get("stage_s")})
    return {"path": str(out_dir / "report.md")}


def _fmt(x, spec=".4f", none="-"):
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _report(name, recipe, meta, cfg, pre, state, metrics, texts, comparison, transcript, info,
            chat_name) -> str:
    from gptforge.train.config import format_config

    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    evals = [r for r in metrics if r.get("val_loss") is not None]
    mfus = [r["mfu"] for r in metrics if r.get("mfu") is not None]
    tok_s = [r["tokens_per_s"] for r in metrics if r.get("tokens_per_s")]
    median = lambda xs: sorted(xs)[len(xs) // 2] if xs else None
    last = metrics[-1] if metrics else {}
    stage_s = info.get("stage_s", {})
    data = info.get("data") or {}
    lines = [
        f"# gptforge speedrun: `{name}`",
        "",
        f"{recipe.description}.",
        "",
        "| | |",
        "|---|---|",
        f"| corpus | `{data.get('corpus', meta['corpus']['spec'])}` ({meta['corpus']['bytes']:,} bytes, "
        f"sha256 `{meta['corpus']['sha256'][:16]}…`) |",
        f"| tokenizer | {meta['tokenizer']['kind']}, vocab {meta['tokenizer']['vocab_size']:,}"
        + (f", trained in {data['tokenizer_s']:.1f} s |" if "tokenizer_s" in data else " |"),
        f"| train split | {tr['tokens']:,} tokens, {tr['bytes']:,} bytes "
        f"({tr['bytes'] / tr['tokens']:.2f} bytes/token) |",
        f"| val split | {va['tokens']:,} tokens, {va['bytes']:,} bytes |",
        f"| model | {cfg.arch} ({cfg.preset}), depth {cfg.depth}"
        + (f", {pre['num_params']:,} parameters |" if "num_params" in pre else " |"),
        f"| steps | {last.get('step', 0):,}" + (f" ({pre['stopped_by']})" if "stopped_by" in pre else "")
        + f", B={cfg.batch_size}, T={cfg.block_size} |",
        f"| tokens seen | {last.get('tokens', 0):,} |",
        f"| pretraining time | {last.get('train_time_s', 0):.1f} s in optimizer steps (what benchmarks "
        "compare), "
        f"{_fmt(pre.get('wall_s'), '.1f')} s wall clock with evaluation and checkpoints"
        + (f" (budget {pre['budget_s']:.0f} s wall clock)" if pre.get("budget_s") else "") + " |",
        "| stages (wall clock) | " + ", ".join(f"{k} {v:.0f} s" for k, v in stage_s.items()) + " |",
        f"| throughput | {_fmt(median(tok_s), ',.0f')} tokens/s (median step), "
        f"MFU {_fmt(median(mfus), '.1%')}"
        + (f" against a peak of {pre['peak_flops'] / 1e9:,.0f} GFLOP/s (the device's theoretical peak: "
           "the pretraining log says how it was computed"
           + ("; above 60% of it, the log says why" if (median(mfus) or 0) > 0.6 else "")
           + ") |" if pre.get("peak_flops") else " |"),
        f"| best checkpoint | `{state.path}` (val loss {_fmt(state.val_loss)}, "
        f"bpb {_fmt(state.val_bpb)}) |",
        "",
        "Loss in nats per token; bits per byte = nats per token / ln 2 / (bytes per token), so it",
        "compares across tokenizers. Intermediate validation uses part of the val split; the",
        "evaluation below scores all of it.",
        "",
    ]
    if pre.get("per_step_s"):
        lines += [f"Pretraining calibrated at {pre['per_step_s'] * 1000:.0f} ms/step.", ""]
    lines += ["## Base vs SFT" + (" vs RL" if (info.get("rl") or {}).get("step") else ""), "",
              "![loss and accuracy](compare.png)", "", comparison.replace("## ", "### "), ""]
    if transcript:
        lines += [f"## A chat with the {chat_name.upper()} model", "",
                  "Greedy, with the calculator tool (the engine runs the call and forces its output "
                  "into the reply); each prompt in a new conversation.", "",
                  "```text", transcript.rstrip("\n"), "```", ""]
    lines += ["## Pretraining loss", "", "![loss curves](loss.png)", "",
              "| step | tokens | train time (s) | val loss | val bpb |",
              "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['tokens']:,} | {r.get('train_time_s', 0):.1f} | {r['val_loss']:.4f} | "
              f"{_fmt(r.get('val_bpb'))} |" for r in evals]
    lines += ["", "## Samples", "", "Temperature 0.8, top-k 50, from the best base checkpoint.", ""]
    for i, t in enumerate(texts):
        lines += [f"### Sample {i + 1}", "", "```text", t.rstrip("\n"), "```", ""]
    lines += ["## Pretraining config", "", "```text", format_config(cfg), "```", ""]
    return "\n".join(lines)
