"""Training: config, batch sources, optimizers, MFU, the loop, and loss plots.

    from gptforge.train import make_config, train
    from gptforge.checkpoint import load_checkpoint
    summary = train(make_config({"data": "data/shakespeare_char", "max_steps": 200}))
    model, state = load_checkpoint(summary["run_dir"], which="best")
"""

import importlib

from gptforge.train.config import TrainConfig, make_config

# the loop and the logger import torch: loaded on first use (PEP 562), so that the CLI can build its
# flags from TrainConfig without it
_LAZY = {"Logger": "log", "resume_config": "loop", "train": "loop"}

__all__ = ["Logger", "TrainConfig", "make_config", "resume_config", "train"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"gptforge.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'gptforge.train' has no attribute {name!r}")
