"""Validation loss and bits per byte on a fixed set of windows of the val split."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gptforge.train.batches import get_batch


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: np.ndarray, offsets: np.ndarray, T: int, B: int,
             token_bytes: torch.Tensor, amp, d) -> tuple[float, float]:
    """``(val_loss, val_bpb)`` on the windows at ``offsets`` (split over ranks, summed over all).

    tokens: the val split; offsets: (n,) int64 window starts (``eval_offsets``); T, B: window
    length and windows per forward pass; token_bytes: (V,) int64 UTF-8 bytes per id; amp: an
    autocast context (or nullcontext); d: the process's ``Dist``.

    val_loss: mean cross-entropy over all target tokens, nats/token. val_bpb: bits per UTF-8 byte,
    ``sum(nats) / ln 2 / sum(bytes)`` over targets that stand for text; special tokens such as
    ``<|endoftext|>`` (0 bytes) are left out of both sums (nanochat's convention), so bpb compares
    across tokenizers.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # nats, tokens, nats on text tokens, bytes
    mine = offsets[d.rank::d.world]
    for i in range(0, len(mine), B):
        x, y = get_batch(tokens, mine[i:i + B], T, d.device)
        with amp:
            logits, _ = model(x, y)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        nbytes = token_bytes[y.flatten()]
        sums += torch.stack([nats.sum(), torch.tensor(nats.numel(), device=nats.device),
                             nats[nbytes > 0].sum(), nbytes.sum()]).double().cpu()
    d.all_sum(sums)
    model.train(was_training)
    nats, n, text_nats, nbytes = sums.tolist()
    return nats / n, (text_nats / math.log(2) / nbytes) if nbytes else float("nan")
