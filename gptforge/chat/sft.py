"""SFT: finetune a base model on conversations, with the pretraining loop (gptforge.train).

Conversations are rendered (``render``: ids and loss masks), then packed whole into rows of
``block_size + 1`` tokens: a row takes conversations in order while they fit, and is padded with
``<|endoftext|>`` (not trained on). A conversation longer than a row is cropped to it and counted
(``PackStats.cropped``), never silently. Targets are the next tokens with -1 where the mask is 0,
so the loss (mean cross-entropy over scored targets, nats/token) and its gradient come only from
what the assistant says.

    data = sft_data(cfg, tok, train_convs, test_convs)     # a TrainData
    train(cfg, data=data)                                  # the same loop, checkpoints, resume

Batches are a pure function of (seed, micro-batch index), as in pretraining, so a resumed SFT
run continues bit for bit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gptforge import checkpoint as ckpt
from gptforge.chat.render import ChatTokens, render
from gptforge.chat.sources import conversations
from gptforge.errors import UserError
from gptforge.tokenizer import Tokenizer, load_tokenizer
from gptforge.train.batches import lm_loss
from gptforge.train.config import SFT_DEFAULTS, TrainConfig, finetune_config, pretraining_data
from gptforge.train.session import TrainData


@dataclass
class PackStats:
    """What packing did: conversations in, rows out, conversations cropped to a row, and the
    tokens: all of them and the trained (mask 1) ones; ``files``: gptforge.chat.sources.ReadStats of
    the files read, when they are known."""

    conversations: int = 0
    rows: int = 0
    cropped: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    files: list = field(default_factory=list)  # each file's reading stats (sft_run_data's train split)


def pack(conversations: Iterable[list[dict]], tok: Tokenizer, T: int
         ) -> tuple[np.ndarray, np.ndarray, PackStats]:
    """Render and pack ``conversations`` into rows of T + 1 tokens.

    Returns ``(rows, masks, stats)``: rows (N, T + 1) int32 token ids, masks (N, T + 1) uint8
    (1 = trained on). Padding is ``<|endoftext|>`` with mask 0.

    Raises:
        UserError: the tokenizer has no chat tokens, or there is no conversation at all.
    """
    pad = ChatTokens(tok).eot
    rows, masks, stats = [], [], PackStats()
    cur_ids: list[int] = []
    cur_mask: list[int] = []

    def flush():
        if cur_ids:
            n = T + 1 - len(cur_ids)
            rows.append(cur_ids + [pad] * n)
            masks.append(cur_mask + [0] * n)
            cur_ids.clear()
            cur_mask.clear()

    for conv in conversations:
        ids, mask = render(conv, tok)
        stats.conversations += 1
        if len(ids) > T + 1:
            stats.cropped += 1
            ids, mask = ids[:T + 1], mask[:T + 1]
        if len(cur_ids) + len(ids) > T + 1:
            flush()
        cur_ids += ids
        cur_mask += mask
        stats.tokens += len(ids)
        stats.trained_tokens += sum(mask)
    flush()
    if not rows:
        raise UserError("no conversations to train on")
    stats.rows = len(rows)
    return np.asarray(rows, dtype=np.int32), np.asarray(masks, dtype=np.uint8), stats


def targets(rows: np.ndarray, masks: np.ndarray, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 (B, T) from rows and masks (B, T + 1): y is -1 where the target is not trained on."""
    r = torch.from_numpy(rows.astype(np.int64))
    m = torch.from_numpy(masks[:, 1:].astype(bool))
    x, y = r[:, :-1], r[:, 1:].masked_fill(~m, -1)
    return x.to(device), y.to(device)


@dataclass
class SFTBatches:
    """B rows per micro-batch: ``get(index, device) -> (x, y)``, a pure function of (seed, index)
    (``gptforge.train.batches.batch_index``).

    Each row is a random packed conversation row, or, with probability ``pretrain_mix`` (drawn
    per row), a random window of T + 1 tokens of ``pretrain`` (the base run's own train split)
    with every target trained on: plain language modelling, so SFT keeps its pretraining text
    (nanochat's midtraining mixes pretraining data in the same way). ``pretrain_mix`` 0 gives the
    conversation rows alone, the same batches as without the option.
    """

    rows: np.ndarray
    masks: np.ndarray
    B: int
    seed: int
    pretrain: np.ndarray | None = None
    pretrain_mix: float = 0.0

    def get(self, index: int, device="cpu"):
        rng = np.random.default_rng([self.seed, index])
        pick = rng.integers(0, len(self.rows), size=self.B)
        rows, masks = self.rows[pick], self.masks[pick]
        if self.pretrain is not None and self.pretrain_mix > 0:
            text = rng.random(self.B) < self.pretrain_mix
            if text.any():
                T = rows.shape[1] - 1
                starts = rng.integers(0, len(self.pretrain) - T, size=int(text.sum()))
                rows, masks = rows.copy(), masks.copy()
                rows[text] = np.stack([self.pretrain[o:o + T + 1] for o in starts])
                masks[text] = 1
        return targets(rows, masks, device)


def sft_data(cfg: TrainConfig, tok: Tokenizer, tokenizer_json: str | Path, train: Iterable[list[dict]],
             test: Iterable[list[dict]], pretrain: np.ndarray | None = None
             ) -> tuple[TrainData, PackStats, PackStats]:
    """The TrainData of an SFT run: ``train`` conversations packed into rows of
    ``cfg.block_size + 1``, ``test`` ones packed the same way for validation (the first
    ceil(eval_tokens / T) rows, or all with eval_tokens 0). Returns (data, train stats, test stats).
    ``pretrain``: token ids (1-D) of pretraining text that ``cfg.pretrain_mix`` of the rows are
    drawn from (``SFTBatches``; default, when the mix is > 0: ``base_train_tokens(cfg.init_from)``);
    validation stays on conversations.

    Raises:
        UserError: no chat tokens in ``tok``, no train or no test conversation; with
            ``cfg.pretrain_mix`` > 0, no pretraining text (``base_train_tokens``) or too little.
    """
    T = cfg.block_size
    rows, masks, stats = pack(train, tok, T)
    vrows, vmasks, vstats = pack(test, tok, T)
    if cfg.eval_tokens:
        keep = -(-cfg.eval_tokens // T)
        vrows, vmasks = vrows[:keep], vmasks[:keep]

    def val_batches(rank: int, world: int, device):
        mine = np.arange(len(vrows))[rank::world]
        for i in range(0, len(mine), cfg.batch_size):
            sel = mine[i:i + cfg.batch_size]
            yield targets(vrows[sel], vmasks[sel], device)

    mix = cfg.pretrain_mix
    if mix > 0 and pretrain is None:
        pretrain = base_train_tokens(cfg.init_from, tok)
        if pretrain is None:  # an imported model, say: nothing to mix in
            print(f"note: {cfg.init_from} records no pretraining shards; SFT runs without --pretrain-mix",
                  file=sys.stderr)
            mix = 0.0
    if mix > 0 and len(pretrain) <= T:
        raise UserError(f"--pretrain-mix: the pretraining text holds {len(pretrain)} tokens, not more than "
                        f"block_size = {T}")
    batches = SFTBatches(rows, masks, cfg.batch_size, cfg.seed, pretrain if mix > 0 else None, mix)
    data = TrainData(batches=batches, loss_fn=lm_loss, val_batches=val_batches, train_tokens=int(rows.size),
                     eval_tokens=int(vrows.size), tokenizer_json=Path(tokenizer_json),
                     tokenizer=tok.identity(), token_bytes=tok.token_bytes())
    return data, stats, vstats


def sft_config(base: str | Path, *layers: dict) -> TrainConfig:
    """The config of an SFT run from base run or checkpoint ``base``: the base run's config, then
    SFT_DEFAULTS, then ``layers`` (flags) (`gptforge.train.config.finetune_config`).

    Raises:
        UserError: no checkpoint at ``base``, a base model that is not a GPT, or a bad setting.
    """
    return finetune_config(base, "sft", SFT_DEFAULTS, *layers, purpose="SFT finetunes GPT models")


def sft_run_data(cfg: TrainConfig, strict: bool = False) -> tuple[TrainData, PackStats, PackStats]:
    """``sft_data`` for ``cfg``: its ``data`` spec's train and test conversations (gptforge.chat.sources),
    the tokenizer of its ``init_from`` checkpoint. The train stats' ``files`` hold each file's reading
    stats.

    Raises:
        UserError: a bad data spec or file (``strict``: any bad row), or no chat tokens.
    """
    tok_file = ckpt.find_checkpoint(cfg.init_from) / "tokenizer.json"
    tok = load_tokenizer(tok_file)
    files: list = []  # filled as the train conversations are read
    train_convs = conversations(cfg.data, "train", cfg.seed, strict, files)
    test_convs = conversations(cfg.data, "test", cfg.seed, strict)
    data, tr, te = sft_data(cfg, tok, tok_file, train_convs, test_convs)
    tr.files = files
    return data, tr, te


def base_train_tokens(init_from: str | Path, tok: Tokenizer) -> np.ndarray | None:
    """The train split (1-D memmap of token ids) of the shards the base checkpoint ``init_from``
    was pretrained on (its run config's ``data``; for a finetuned base, that of the pretraining run
    it descends from), checked against ``tok``; None when its runs record none (an imported model).

    Raises:
        UserError: the base was not pretrained on a shard directory, or the directory is missing,
            corrupt or made with another tokenizer.
    """
    from gptforge.data.shards import open_shards

    shards = pretraining_data(ckpt.find_checkpoint(init_from).parent.parent)
    if shards is None:
        return None
    if not Path(shards).is_dir():
        raise UserError(f"--pretrain-mix: the base model's pretraining shards ({shards}) "
                        "are not here; mix pretraining text only from a base run trained on a shard "
                        "directory that still exists, or give --pretrain-mix 0")
    return open_shards(shards, tok).tokens("train")
