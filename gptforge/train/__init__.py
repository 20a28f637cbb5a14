"""Pretraining: config, batches, optimizers, checkpoints, MFU, the loop and loss plots.

    from gptforge.train import make_config, train, load_checkpoint
    summary = train(make_config({"data": "data/shakespeare_char", "max_steps": 200}))
    model, state = load_checkpoint(summary["run_dir"], which="best")

Names are imported lazily, so that ``gptforge --help`` does not import torch.
"""

_EXPORTS = {"TrainConfig": "config", "make_config": "config", "train": "trainer", "resume_config": "trainer",
            "load_checkpoint": "checkpoint", "find_checkpoint": "checkpoint"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"gptforge.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'gptforge.train' has no attribute {name!r}")
