"""build_model / model_config / model_from_config: the one place that maps arch names to classes."""

from __future__ import annotations

import dataclasses

import torch

from gptforge.config import convert_all
from gptforge.errors import UserError
from gptforge.models import ARCHS
from gptforge.models.bigram import Bigram, BigramConfig
from gptforge.models.gpt import GPT, GPTConfig, gpt_config
from gptforge.models.lstm import LSTM, LSTMConfig
from gptforge.models.mlp import MLP, MLPConfig

_CLASSES = {"bigram": (Bigram, BigramConfig), "mlp": (MLP, MLPConfig), "lstm": (LSTM, LSTMConfig),
            "gpt": (GPT, GPTConfig)}


def config_class(arch: str) -> type:
    """The config dataclass of ``arch`` (GPTConfig, LSTMConfig, ...); unknown arch -> UserError."""
    if arch not in _CLASSES:
        raise UserError(f"unknown model arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return _CLASSES[arch][1]


def _config(arch: str, fields: dict):
    cls = config_class(arch)
    return cls(**convert_all(cls, fields, f"{arch} config"))


def build_model(arch: str, vocab_size: int, block_size: int, **config) -> torch.nn.Module:
    """A freshly initialised model (deterministic under torch.manual_seed).

    arch: one of ARCHS. config: fields of that arch's config dataclass; for "gpt" also
    preset="gpt2" | "modern" (default "modern") and depth=N (see `gpt_config`), any other GPTConfig
    field overriding the preset. Unknown arch or field -> UserError.
    """
    config_class(arch)
    if arch == "gpt":
        preset = config.pop("preset", "modern")
        depth = config.pop("depth", None)
        return GPT(gpt_config(preset, depth, vocab_size=vocab_size, block_size=block_size, **config))
    return _CLASSES[arch][0](_config(arch, dict(vocab_size=vocab_size, block_size=block_size, **config)))


def model_config(model: torch.nn.Module) -> dict:
    """{"arch": ..., **dataclasses.asdict(model.config)}: JSON-serialisable, enough to rebuild the
    architecture with `model_from_config` (GPT presets are already resolved into fields)."""
    for arch, (cls, _) in _CLASSES.items():
        if type(model) is cls:
            return {"arch": arch, **dataclasses.asdict(model.config)}
    raise TypeError(f"not a gptforge model: {type(model).__name__}")


def model_from_config(d: dict) -> torch.nn.Module:
    """Inverse of `model_config`: the same architecture, freshly initialised. Bad dict -> UserError."""
    d = dict(d)
    arch = d.pop("arch", None)
    if arch not in _CLASSES:
        raise UserError(f"model config has unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    return _CLASSES[arch][0](_config(arch, d))


def with_block_size(model: torch.nn.Module, block_size: int) -> torch.nn.Module:
    """A copy of RoPE GPT ``model`` (same weights, same device and dtype) with a context of
    ``block_size`` tokens, longer than its own. Rotary position angles exist for every position
    (Su et al. 2021), so the weights carry over unchanged and finetuning teaches the longer span;
    a learned position table (wpe, GPT-2) has no rows past the block size it was trained at.

    Raises:
        UserError: not a RoPE GPT, or ``block_size`` shorter than the model's.
    """
    cfg = model.config
    if getattr(cfg, "positional", None) != "rope":
        raise UserError("only rotary positions (RoPE: the modern preset) reach past the context a model "
                        "was trained at; this model learned a table of positions")
    if block_size < cfg.block_size:
        raise UserError(f"block_size {block_size} is shorter than the model's {cfg.block_size}")
    p = next(model.parameters())
    longer = model_from_config({**model_config(model), "block_size": block_size}).to(p.device, p.dtype)
    longer.load_state_dict(model.state_dict())  # rope_cos / rope_sin are not in it: rebuilt for block_size
    return longer.train(model.training)
