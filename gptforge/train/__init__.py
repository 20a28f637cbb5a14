"""Training: config, batch sources, optimizers, MFU, the loop, and loss plots.

    from gptforge.train import make_config, train
    from gptforge.checkpoint import load_checkpoint
    summary = train(make_config({"data": "data/shakespeare_char", "max_steps": 200}))
    model, state = load_checkpoint(summary["run_dir"], which="best")
"""

from gptforge.train.config import TrainConfig, make_config
from gptforge.train.log import Logger
from gptforge.train.loop import resume_config, train

__all__ = ["Logger", "TrainConfig", "make_config", "resume_config", "train"]
