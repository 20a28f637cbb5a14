"""The training config (pretraining and SFT): one dataclass, filled from defaults < a TOML file < flags.

Each field declares its help text, choices and bounds once (``gptforge.config.setting``); the
flags of ``gptforge pretrain`` and their ``--help`` are generated from them. A TOML file uses the
field names as top-level keys; model overrides (any field of the architecture's config, e.g.
``n_embd``) go in a ``[model]`` table, typed by that config (``logit_softcap = "none"`` turns the
softcap off, since TOML has no null)::

    arch = "gpt"
    preset = "modern"
    depth = 4
    max_steps = 2000

    [model]
    n_embd = 192
    bias = false

The resolved config is printed at start, written to ``RUN_DIR/config.json`` and saved in every
checkpoint's ``trainer.json``, with ``data`` and ``init_from`` relative to the run directory
(``saved_config`` / ``from_saved``), so a run moved or shared together with its data still resumes,
from any working directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from gptforge.config import check, convert, convert_all, setting
from gptforge.errors import UserError
from gptforge.models import ARCHS, PRESETS

BIG = 1 << 62  # upper bound of counts that only need to fit in an int64


@dataclass
class TrainConfig:
    """Every setting of a training run (pretraining, SFT, DPO). Units: tokens, steps (optimizer steps),
    seconds."""

    # task, data and output
    task: str = setting("pretrain", "pretrain on token shards, sft: finetune on conversations, dpo: "
                                    "preference-tune on chosen/rejected pairs, or rl: policy gradient on "
                                    "verifiable rewards",
                        choices=("pretrain", "sft", "dpo", "rl"))
    data: str = setting("", "pretrain: shard directory (`gptforge data prepare`); sft: conversations; "
                            "dpo: preference pairs (JSONL or an arena database); rl: tasks", metavar="DIR")
    dpo_beta: float = setting(0.1, "dpo only: beta, the strength of the pull towards the reference model",
                              gt=0, le=1000)
    pretrain_mix: float = setting(0.0, "sft only: share of rows that are the base run's pretraining text",
                                  ge=0, lt=1)
    rl_samples: int = setting(8, "rl only: replies sampled per prompt (the group; batch_size counts replies)",
                              ge=2, le=4096)
    rl_kl: float = setting(0.0, "rl only: weight of the KL penalty against the starting model", ge=0, le=1000)
    rl_std: bool = setting(False, "rl only: divide each group's advantages by its reward std (GRPO)")
    rl_eval_items: int = setting(16, "rl only: held-out prompts per task in each evaluation", ge=1,
                                 le=100_000)
    init_from: str = setting("", "start from this checkpoint's weights (a run or checkpoint directory); "
                                 "empty -> a new model", metavar="DIR")
    lora: str = setting("", "train LoRA adapters only, the rest frozen: r=RANK,alpha=A[,targets=NAME,...] "
                            "(default targets: every Linear layer of the blocks, c_attn,c_proj,c_fc); "
                            "needs init_from; empty -> every weight trains", metavar="SPEC")
    out: str = setting("", "run directory; empty -> runs/<YYYYmmdd-HHMMSS> (-2, -3, ... when taken)",
                       metavar="DIR")
    # model
    arch: str = setting("gpt", "model family", choices=ARCHS)
    preset: str = setting("modern", "gpt only: architecture preset", choices=PRESETS)
    depth: int = setting(4, "gpt only: number of Transformer blocks (width follows)", ge=1, le=1024)
    model: dict = setting(help="overrides of the arch's config, e.g. n_embd (--model KEY=VALUE)",
                          default_factory=dict)
    block_size: int = setting(128, "T: context length in tokens", ge=1, le=1 << 20)
    # batch: B sequences of T tokens per device per micro step; accumulate to tokens_per_step
    batch_size: int = setting(16, "B: sequences per device per micro step", ge=1, le=1 << 20)
    tokens_per_step: int = setting(0, "tokens per optimizer step, all devices; 0 -> B * T * processes",
                                   ge=0, le=BIG)
    sampling: str = setting("random", "pretraining batch windows: random offsets (nanoGPT), sequential, "
                                      "packed (documents of a multi-document corpus best-fit into rows "
                                      "that each start at a document, nanochat's loader; the cut-off "
                                      "share is logged as train_cropped), or curriculum (experimental: "
                                      "chunks whose loss is still falling drawn more, noise and learnt "
                                      "text less; one process only; see gptforge/train/curriculum.py)",
                            choices=("random", "sequential", "packed", "curriculum"))
    chunk_windows: int = setting(8, "curriculum: windows of block_size tokens per chunk (the unit the "
                                    "sampler keeps a loss record for)", ge=1, le=1 << 20)
    curriculum_mix: float = setting(0.5, "curriculum: share of the draws spread uniformly over chunks "
                                         "(the rest follows learning progress)", ge=0, le=1)
    dial: bool = setting(False, "gpt pretraining: derive max_steps, tokens_per_step, lr, muon_lr and "
                                "weight_decay from depth by nanochat's rules (depth_dial; printed at "
                                "start); values set in a file or flag win")
    param_data_ratio: float = setting(12.0, "dial: training tokens per parameter (12: nanochat's fit, "
                                            "counting matrices and lm_head; Chinchilla's is 20)",
                                      gt=0, le=1e6)
    seed: int = setting(1337, "model init, dropout and batch sampling", ge=0, le=2**32 - 1)
    # optimizer
    optimizer: str = setting("adamw", "adamw, or muon (Muon for hidden 2-D weights, AdamW for the rest)",
                             choices=("adamw", "muon"))
    lr: float = setting(3e-3, "AdamW peak learning rate", ge=0, le=10)
    muon_lr: float = setting(0.02, "Muon peak learning rate", ge=0, le=10)
    muon_momentum: float = setting(0.95, "Muon's (Nesterov) momentum", ge=0, lt=1)
    weight_decay: float = setting(0.1, "AdamW: on >= 2-D weights only; Muon: on its matrices", ge=0, le=10)
    beta1: float = setting(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = setting(0.95, "AdamW beta2", ge=0, lt=1)
    grad_clip: float = setting(1.0, "max global gradient norm; 0 disables", ge=0)
    # learning-rate schedule: linear warmup, then cosine to min_lr_frac, or warmup-stable-decay
    schedule: str = setting("cosine", "after warmup: cosine decay, or warmup-stable-decay",
                            choices=("cosine", "wsd"))
    warmup_steps: int = setting(20, "linear warmup steps", ge=0, le=BIG)
    warmdown_frac: float = setting(0.2, "wsd: share of the steps spent decaying linearly at the end",
                                   ge=0, lt=1)
    min_lr_frac: float = setting(0.1, "final lr as a fraction of the peak", ge=0, le=1)
    decay_steps: int = setting(0, "schedule horizon in steps; 0 -> the step budget", ge=0, le=BIG)
    # budgets (whichever comes first; the schedule follows max_steps / max_tokens)
    max_steps: int = setting(500, "optimizer steps to train for", ge=1, le=BIG)
    max_tokens: int = setting(0, "training tokens to stop at; 0 -> no token budget", ge=0, le=BIG)
    max_time: float = setting(0.0, "seconds of training in this process; 0 -> no limit", ge=0)
    schedule_time: float = setting(0.0, "wsd: seconds of optimizer steps (evaluation and checkpoints "
                                        "not counted) the schedule fills: until the warmdown begins the "
                                        "step count is re-planned from measured step times (max_steps is "
                                        "the first plan); 0 -> the step budget is fixed", ge=0)
    # evaluation, logging, checkpoints
    eval_interval: int = setting(100, "steps between evaluations (also at step 0 and at the end)",
                                 ge=1, le=BIG)
    eval_tokens: int = setting(32768, "fixed validation subset, in target tokens; 0 -> the whole split",
                               ge=0, le=BIG)
    log_interval: float = setting(10.0, "seconds between log lines when there is no progress bar",
                                  gt=0, le=86400)
    ckpt_interval: int = setting(0, "steps between checkpoints; 0 -> eval_interval", ge=0, le=BIG)
    keep_last: int = setting(2, "step checkpoints kept besides the best", ge=0, le=BIG)
    progress: str = setting("auto", "auto: a bar when stderr is a terminal, else log lines",
                            choices=("auto", "bar", "log", "none"))
    # system
    device: str = setting("auto", "where to train", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = setting("auto", "auto: bfloat16 autocast on CUDA with bf16 and on a CPU with bf16 "
                                 "instructions (AMX-BF16, AVX512-BF16), else float32",
                         choices=("auto", "float32", "bfloat16"))
    compile: bool = setting(False, "torch.compile the model")
    parallel: str = setting("ddp", "under torchrun: ddp (a whole model per process) or fsdp (parameters, "
                                   "gradients and optimizer state sharded over the processes, torch "
                                   "FSDP2: a model past one device's memory)", choices=("ddp", "fsdp"))
    threads: int = setting(0, "CPU threads per process; 0 -> cores / processes on this node (capped "
                              "at the core count)", ge=0, le=4096)

    def __post_init__(self):
        check(self, "config")
        if self.lora:
            from gptforge.models.lora import parse_lora

            self.lora = str(parse_lora(self.lora))  # the spelled-out form: all its keys, as saved
            if not self.init_from:
                raise UserError("config: lora trains adapters on a trained model; it needs init_from "
                                "(`gptforge sft --ckpt`, or `pretrain --init-from`)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: the depth dial's reference (nanochat, scripts/base_train.py): the default lr, muon_lr and
#: weight_decay are taken as right for a model of depth DIAL_REF_DEPTH at DIAL_REF_BATCH tokens a step
DIAL_REF_DEPTH = 12
DIAL_REF_BATCH = 2 ** 19


def depth_dial(cfg: TrainConfig, explicit: set[str], params: int, ref_params: int, micro_tokens: int
               ) -> tuple[dict, list[str]]:
    """The settings the depth dial derives, ``(values, lines)``: the values of the keys not in
    ``explicit`` (those set by a file or flag, used as given in the rules below), and one printable
    line per derived value with its rule. The rules are nanochat's (scripts/base_train.py):

    - horizon: D = param_data_ratio x N tokens, N = ``params``, the model's parameters without
      its input embeddings (nanochat counts matrices + lm_head); max_steps = D // tokens_per_step.
    - batch: tokens_per_step = B_ref x (D / D_ref)^0.383 (Power Lines, arXiv:2505.13738), to a
      power of 2 (nanochat), then to a multiple of B x T x processes (``micro_tokens``);
      B_ref = DIAL_REF_BATCH, D_ref = param_data_ratio x ``ref_params`` (the same model at depth
      DIAL_REF_DEPTH).
    - learning rates: lr and muon_lr x sqrt(tokens_per_step / B_ref) (the square-root rule for
      Adam; nanochat applies it to Muon too).
    - weight decay: weight_decay x sqrt(tokens_per_step / B_ref) x D_ref / D, which keeps
      B / (lr x wd x D) constant (the AdamW timescale, arXiv:2405.13698).
    """
    default = TrainConfig()
    D, D_ref = cfg.param_data_ratio * params, cfg.param_data_ratio * ref_params
    out, lines = {}, []

    def derive(key, value, rule):
        if key in explicit:
            lines.append(f"  {key} = {getattr(cfg, key)!r} (set, not derived)")
            return getattr(cfg, key)
        out[key] = value
        lines.append(f"  {key} = {value!r}: {rule}")
        return value

    lines.append(f"depth dial: N = {params:,} parameters (without input embeddings), D = "
                 f"{cfg.param_data_ratio:g} x N = {D:,.0f} tokens; reference: depth {DIAL_REF_DEPTH}, "
                 f"N_ref = {ref_params:,}, B_ref = {DIAL_REF_BATCH:,} tokens/step")
    pow2 = 2 ** round(math.log2(DIAL_REF_BATCH * (D / D_ref) ** 0.383))
    B = derive("tokens_per_step", max(1, round(pow2 / micro_tokens)) * micro_tokens,
               f"B_ref x (D / D_ref)^0.383 to a power of 2 ({pow2:,}), then to a multiple of "
               f"{micro_tokens:,}")
    derive("max_steps", max(1, int(D // B)), "D // tokens_per_step")
    scale = math.sqrt(B / DIAL_REF_BATCH)
    derive("lr", default.lr * scale, f"{default.lr:g} x sqrt(tokens_per_step / B_ref) = x {scale:.4g}")
    derive("muon_lr", default.muon_lr * scale, f"{default.muon_lr:g} x sqrt(tokens_per_step / B_ref)")
    derive("weight_decay", default.weight_decay * scale * D_ref / D,
           f"{default.weight_decay:g} x sqrt(tokens_per_step / B_ref) x D_ref / D")
    return out, lines


# keys that change the model's shape (or what of it trains) or its data: fixed once a run exists
FIXED_ON_RESUME = ("task", "init_from", "arch", "preset", "depth", "model", "block_size", "lora")
# keys that may name a path
PATH_KEYS = ("data", "init_from")


def saved_config(cfg: TrainConfig, run_dir: str | os.PathLike) -> dict:
    """``cfg`` as config.json and trainer.json store it: ``data`` and ``init_from``, when they name
    existing paths, relative to ``run_dir`` (SFT mixture names and the like stay as they are)."""
    d = cfg.to_dict()
    for k in PATH_KEYS:
        if d[k] and os.path.exists(d[k]):
            d[k] = os.path.relpath(os.path.abspath(d[k]), os.path.abspath(run_dir))
    return d


def from_saved(d: dict, run_dir: str | os.PathLike) -> dict:
    """The inverse of ``saved_config``: a path that exists relative to ``run_dir`` is joined to it.
    Others are kept: absolute paths, mixture names, and the paths of runs saved before paths were
    relative (relative to the directory they started in)."""
    d = dict(d)
    for k in PATH_KEYS:
        if isinstance(d.get(k), str) and d[k] and os.path.exists(Path(run_dir, d[k])):
            d[k] = os.path.normpath(Path(run_dir, d[k]))
    return d


def pretraining_data(run_dir: str | os.PathLike | None) -> str | None:
    """The shard directory the pretraining behind run ``run_dir`` read: its own for a pretraining
    run, else its base run's, following ``init_from`` back (RL -> SFT -> pretrain); None when a run
    in the chain has no config.json or no data. Paths come back whole (``from_saved``)."""
    from gptforge.io import read_json

    for _ in range(16):  # bounded: a chain of finetunes, never a loop
        if run_dir is None or not Path(run_dir, "config.json").is_file():
            return None
        cfg = from_saved(read_json(Path(run_dir, "config.json"), what="run config"), run_dir)
        if cfg.get("task", "pretrain") == "pretrain":
            return cfg.get("data") or None
        init = Path(cfg.get("init_from") or ".")
        run_dir = init.parent.parent if init.parent.name == "ckpt" else None
    return None


def check_saved_data(cfg: TrainConfig, saved_data: str, run_dir: str | os.PathLike) -> None:
    """Raise UserError when pretraining config ``cfg`` still names the shard directory its run saved,
    ``saved_data``, and it is gone (moved, deleted): say that --data overrides it."""
    if cfg.task == "pretrain" and cfg.data and cfg.data == saved_data and not os.path.isdir(cfg.data):
        raise UserError(f"{run_dir}: the run's shard directory {cfg.data} is missing (moved or deleted?); "
                        "--data DIR overrides it")


def make_config(base: dict | None = None, *layers: dict, where: str = "config") -> TrainConfig:
    """A validated TrainConfig: field defaults, then ``base``, then each layer in order.

    Values may be typed (TOML, JSON) or command-line strings; ``model`` dicts are merged key by key
    rather than replaced, and typed by the arch's config.

    Raises:
        UserError: an unknown key or a value the field does not accept.
    """
    values = TrainConfig().to_dict()
    for layer in (base or {}, *layers):
        for k, v in layer.items():
            v = convert(TrainConfig, k, v, where)
            values[k] = {**values["model"], **v} if k == "model" else v
    arch = convert(TrainConfig, "arch", values["arch"], where)
    from gptforge.models import config_class  # here: the model modules import torch, --help must not

    values["model"] = convert_all(config_class(arch), values["model"], f"{where}: model")
    return TrainConfig(**values)


# what every finetuning run (SFT, DPO, RL) changes from its base run's config: a run directory of its
# own (empty: a new timestamped one, never the base's), fresh budgets, a short warmup, random
# batches (of conversations or pairs, whatever the base's sampling was), frequent evaluation, one
# checkpoint kept, and no weight decay, which would pull the trained weights toward zero over a few
# hundred steps of little data (nanochat's SFT uses none either); no LoRA unless asked (a LoRA base
# comes merged: gptforge.models.lora)
FINETUNE_RESETS = {"out": "", "max_time": 0.0, "schedule_time": 0.0, "max_tokens": 0, "decay_steps": 0,
                   "warmup_steps": 10, "sampling": "random", "weight_decay": 0.0, "eval_interval": 50,
                   "ckpt_interval": 0, "keep_last": 1, "tokens_per_step": 0, "progress": "auto",
                   "pretrain_mix": 0.0, "lora": ""}

# what an SFT run changes from the base run's config unless told otherwise (the base's schedule shape
# and learning rates stay); here rather than in chat/sft.py so that `sft --help` needs no torch
SFT_DEFAULTS = {**FINETUNE_RESETS, "max_steps": 300, "eval_tokens": 65536, "pretrain_mix": 0.25}

# what an RL run (gptforge.finetune.rl) changes from its SFT run's config unless told otherwise (here
# so that `rl --help` needs no torch): B = 16 replies (2 prompts x 8 samples) per micro-batch, AdamW
# at a small constant lr after a short warmup (wsd without a warmdown), so a run cut by its time
# budget has trained at full strength throughout. lr 1e-4: at 1e-3 the KL to the SFT model reached
# 1-2 nats per token within 30 steps (bench/README.md, "RL")
RL_DEFAULTS = {**FINETUNE_RESETS, "optimizer": "adamw", "lr": 1e-4, "batch_size": 16, "max_steps": 200,
               "schedule": "wsd", "warmdown_frac": 0.0, "warmup_steps": 5, "eval_interval": 20,
               "pretrain_mix": 0.0, "grad_clip": 1.0}
RL_TASKS = ("arithmetic", "letter_count", "social")  # the checkable tasks RL trains on (gptforge.chat.tasks)


def finetune_config(base, task: str, defaults: dict, *layers: dict, purpose: str) -> TrainConfig:
    """The config of a finetuning run (SFT, DPO) from base run or checkpoint ``base`` (its best
    checkpoint, else its latest): the base run's config, then ``defaults``, then ``layers`` (flags),
    with ``task`` and init_from set. ``purpose`` opens the error for a base that is not a GPT
    ("SFT finetunes GPT models").

    Raises:
        UserError: no checkpoint at ``base``, a base model that is not a GPT, or a bad setting.
    """
    try:
        from gptforge import checkpoint as ckpt  # here: it imports torch, --help must not

        found = ckpt.find_checkpoint(base, "best")
    except UserError:
        found = ckpt.find_checkpoint(base, "latest")
    state = ckpt.read_trainer_state(found)
    if state.model_config.get("arch") != "gpt":
        raise UserError(f"{found}: {purpose}; this one is {state.model_config.get('arch')!r}")
    merged = {k: v for layer in layers for k, v in layer.items()}  # later layers win, whole values
    return make_config(from_saved(state.config, found.parent.parent), defaults, merged,
                       {"task": task, "init_from": str(found)}, where=task)


def format_config(cfg: TrainConfig) -> str:
    """The config as aligned ``key = value`` lines (TOML-like), for printing at start."""
    d = cfg.to_dict()
    width = max(map(len, d))
    return "\n".join(f"  {k:<{width}} = {v!r}" for k, v in d.items())
