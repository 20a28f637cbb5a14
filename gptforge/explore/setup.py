"""What the trainer would build for a config, without training: its config, data and fresh model.

``inspect`` and ``doctor`` need the objects ``gptforge.train.session.setup`` makes (the batch
source, the validation batches, the model at initialisation) but not a run directory or a lock.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gptforge import checkpoint as ckpt
from gptforge.chat.sft import sft_data
from gptforge.chat.sources import conversations
from gptforge.data.shards import open_shards
from gptforge.errors import UserError
from gptforge.io import read_json
from gptforge.models import build_model
from gptforge.tokenizer import load_tokenizer
from gptforge.train.config import TrainConfig, from_saved, make_config
from gptforge.train.session import TrainData, shard_data


def run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The config of a run: ``RUN_DIR/config.json`` (written at the start), else the latest
    checkpoint's ``trainer.json``.

    Raises:
        UserError: neither exists or it is not a valid config.
    """
    p = Path(run_dir)
    if (p / "config.json").is_file():
        return make_config(from_saved(read_json(p / "config.json", what="run config"), p),
                           where=str(p / "config.json"))
    ck = ckpt.find_checkpoint(p, "latest")
    return make_config(from_saved(ckpt.read_trainer_state(ck).config, ck.parent.parent),
                       where=str(ck / "trainer.json"))


def world_size(run_dir: str | os.PathLike | None) -> int:
    """Processes the run trained with (from its latest checkpoint; 1 when unknown)."""
    if run_dir is None:
        return 1
    try:
        return ckpt.read_trainer_state(ckpt.find_checkpoint(run_dir, "latest")).world_size or 1
    except UserError:
        return 1


def sft_tokenizer(cfg: TrainConfig):
    """(tokenizer, tokenizer.json path) of an SFT config: those of the checkpoint it starts from."""
    if not cfg.init_from:
        raise UserError("an SFT config needs init_from (the base checkpoint)")
    tok_file = ckpt.find_checkpoint(cfg.init_from) / "tokenizer.json"
    return load_tokenizer(tok_file), tok_file


def train_data(cfg: TrainConfig) -> tuple[TrainData, object]:
    """(TrainData, tokenizer) exactly as ``gptforge pretrain`` / ``gptforge sft`` build them.

    Raises:
        UserError: missing or bad data, or (SFT) a base checkpoint that cannot be read.
    """
    if cfg.task == "sft":
        tok, tok_file = sft_tokenizer(cfg)
        data, _, _ = sft_data(cfg, tok, tok_file, conversations(cfg.data, "train", cfg.seed),
                              conversations(cfg.data, "test", cfg.seed))
        return data, tok
    if not cfg.data:
        raise UserError("no data: the config names no shard directory")
    return shard_data(cfg), open_shards(cfg.data).tokenizer()


def fresh_model(cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    """The model the run starts from, in train mode on the CPU: the ``init_from`` weights, or a
    new model initialised with ``cfg.seed`` (as ``setup`` does)."""
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        model, _ = ckpt.load_checkpoint(cfg.init_from, "latest")
    else:
        dial = {"preset": cfg.preset, "depth": cfg.depth} if cfg.arch == "gpt" else {}
        model = build_model(cfg.arch, vocab_size=vocab_size, block_size=cfg.block_size, **dial, **cfg.model)
    return model.train()


def accum_steps(cfg: TrainConfig, world: int = 1) -> int:
    """Micro steps per optimizer step, as ``setup`` computes it.

    Raises:
        UserError: tokens_per_step is not a multiple of B * T * world.
    """
    micro = cfg.batch_size * cfg.block_size * world
    per_step = cfg.tokens_per_step or micro
    if per_step % micro:
        raise UserError(f"config: tokens_per_step ({per_step}) must be a multiple of batch_size x block_size "
                        f"x processes = {micro}")
    return per_step // micro
