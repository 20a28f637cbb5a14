"""The pretraining config: one dataclass, filled from defaults < a TOML file < command-line flags.

A TOML file uses the field names below as top-level keys; model overrides (any field of the
architecture's config, e.g. ``n_embd``) go in a ``[model]`` table::

    arch = "gpt"
    preset = "modern"
    depth = 4
    max_steps = 2000

    [model]
    n_embd = 192

The resolved config is printed at start, written to ``RUN_DIR/config.json`` and saved in every
checkpoint's ``trainer.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gptforge.errors import UserError


@dataclass
class TrainConfig:
    """Every setting of a pretraining run. Units: tokens, steps (optimizer steps), seconds."""

    # data and output
    data: str = ""                # shard directory (made by `gptforge data prepare`)
    out: str = ""                 # run directory; "" -> runs/<YYYYmmdd-HHMMSS>
    # model
    arch: str = "gpt"             # bigram | mlp | lstm | gpt
    preset: str = "modern"        # gpt only: gpt2 | modern
    depth: int = 4                # gpt only: number of Transformer blocks
    model: dict = field(default_factory=dict)  # overrides passed to build_model (e.g. n_embd)
    block_size: int = 128         # T: context length in tokens
    # batch: B sequences of T tokens per device per micro step; accumulate to tokens_per_step
    batch_size: int = 16          # B: sequences per device per micro step
    tokens_per_step: int = 0      # tokens per optimizer step, all devices; 0 -> B * T * world size
    sampling: str = "random"      # random (nanoGPT-style windows) | sequential
    seed: int = 1337              # model init, dropout and batch sampling
    # optimizer
    optimizer: str = "adamw"      # adamw | muon (Muon for hidden 2-D weights, AdamW for the rest)
    lr: float = 3e-3              # AdamW peak learning rate
    muon_lr: float = 0.02         # Muon peak learning rate
    muon_momentum: float = 0.95   # Muon's (Nesterov) momentum
    weight_decay: float = 0.1     # AdamW: on >= 2-D weights only; Muon: on its matrices
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0        # max global grad norm; 0 disables
    # learning-rate schedule: linear warmup, then cosine to min_lr_frac, or warmup-stable-decay
    schedule: str = "cosine"      # cosine | wsd
    warmup_steps: int = 20
    warmdown_frac: float = 0.2    # wsd: share of the steps spent decaying linearly at the end
    min_lr_frac: float = 0.1      # final lr as a fraction of the peak
    decay_steps: int = 0          # schedule horizon in steps; 0 -> the step budget
    # budgets (whichever comes first; the schedule follows max_steps / max_tokens)
    max_steps: int = 500
    max_tokens: int = 0           # 0 -> no token budget
    max_time: float = 0.0         # seconds of training in this process; 0 -> no limit
    # evaluation, logging, checkpoints
    eval_interval: int = 100      # steps between evaluations (also at step 0 and at the end)
    eval_tokens: int = 32768      # fixed validation subset, in target tokens; 0 -> the whole split
    log_interval: int = 10        # steps between printed log lines when no progress bar
    ckpt_interval: int = 0        # steps between checkpoints; 0 -> eval_interval
    keep_last: int = 2            # step checkpoints kept besides the best
    progress: str = "auto"        # auto (bar when stderr is a terminal) | bar | log | none
    # system
    device: str = "auto"          # auto | cpu | cuda | mps
    dtype: str = "auto"           # auto | float32 | bfloat16 (autocast)
    compile: bool = False         # torch.compile the model
    threads: int = 0              # CPU threads per process; 0 -> cores / processes on this node

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "arch": ("bigram", "mlp", "lstm", "gpt"),
    "preset": ("gpt2", "modern"),
    "sampling": ("random", "sequential"),
    "optimizer": ("adamw", "muon"),
    "schedule": ("cosine", "wsd"),
    "progress": ("auto", "bar", "log", "none"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "dtype": ("auto", "float32", "bfloat16"),
}
POSITIVE = ("block_size", "batch_size", "max_steps", "eval_interval", "log_interval")
NON_NEGATIVE = ("eval_tokens", "tokens_per_step", "warmup_steps", "decay_steps", "max_tokens",
                "max_time", "ckpt_interval", "keep_last", "threads", "depth", "lr", "muon_lr",
                "weight_decay", "grad_clip")
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# keys that change the model's shape or the data it was trained on: fixed once a run exists
FIXED_ON_RESUME = ("arch", "preset", "depth", "model", "block_size")


def _field_type(name: str) -> type:
    return {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}[str(FIELDS[name].type)]


def coerce(name: str, value, where: str = "config"):
    """Check/convert ``value`` for field ``name`` (ints are accepted for floats).

    Raises:
        UserError: unknown key (with a suggestion) or a value of the wrong type.
    """
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"{where}: unknown config key {name!r}{hint}")
    typ = _field_type(name)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UserError(f"{where}: {name} must be {typ.__name__}, got {value!r}")
    return value


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every value's range; return ``cfg``.

    Raises:
        UserError: a value out of range or not one of the allowed choices.
    """
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise UserError(f"config: {name} must be one of {', '.join(allowed)}; got {getattr(cfg, name)!r}")
    for name in POSITIVE:
        if getattr(cfg, name) <= 0:
            raise UserError(f"config: {name} must be > 0; got {getattr(cfg, name)!r}")
    for name in NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise UserError(f"config: {name} must be >= 0; got {getattr(cfg, name)!r}")
    for name in ("warmdown_frac", "min_lr_frac", "beta1", "beta2"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise UserError(f"config: {name} must be in [0, 1]; got {getattr(cfg, name)!r}")
    if cfg.arch == "gpt" and cfg.depth < 1:
        raise UserError("config: depth must be >= 1 for arch 'gpt'")
    return cfg


def load_toml(path: str | Path) -> dict:
    """Read a TOML config file into a dict of checked values (unknown keys raise UserError)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid TOML file ({e})") from None
    return {k: coerce(k, v, where=str(path)) for k, v in raw.items()}


def parse_model_overrides(items: list[str]) -> dict:
    """``["n_embd=128", "bias=true", "norm='rms'"]`` -> dict; values are TOML literals, bare words
    are strings.

    Raises:
        UserError: an item without ``=``.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--model {item!r}: expected KEY=VALUE, e.g. --model n_embd=128")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def make_config(base: dict | None = None, *layers: dict) -> TrainConfig:
    """Build a validated TrainConfig: field defaults, then ``base``, then each layer in order.

    ``model`` dicts are merged key by key rather than replaced.
    """
    cfg = TrainConfig()
    for layer in (base or {}, *layers):
        for k, v in layer.items():
            v = coerce(k, v)
            if k == "model":
                v = {**cfg.model, **v}
            setattr(cfg, k, v)
    return validate(cfg)


def format_config(cfg: TrainConfig) -> str:
    """The config as aligned ``key = value`` lines (TOML-like), for printing at start."""
    d = cfg.to_dict()
    width = max(map(len, d))
    return "\n".join(f"  {k:<{width}} = {v!r}" for k, v in d.items())
