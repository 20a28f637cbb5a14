"""Validation loss and bits per byte on fixed batches: windows of a val split, or masked SFT rows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from gptforge.models import eval_mode
from gptforge.train.batches import get_batch


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             token_bytes: torch.Tensor, amp, d, lockstep: bool = False) -> tuple[float, float]:
    """``(val_loss, val_bpb)`` over this rank's ``batches`` of (x, y), summed over all ranks.

    batches: (x, y) int64 pairs of shape (B, T), targets -1 where nothing is scored (SFT masks);
    token_bytes: (V,) int64 UTF-8 bytes per id; amp: an autocast context (or nullcontext);
    d: the process's ``Dist``; lockstep: every rank runs as many forward passes (an FSDP model's
    forward is collective: it all-gathers each unit's weights), a rank short of batches one on a
    single token that scores nothing.

    val_loss: mean cross-entropy over all scored targets, nats/token. val_bpb: bits per UTF-8 byte,
    ``sum(nats) / ln 2 / sum(bytes)`` over scored targets that stand for text; special tokens such
    as ``<|endoftext|>`` (0 bytes) are left out of both sums (nanochat's convention), so bpb
    compares across tokenizers. NaN when nothing (or no text) was scored.
    """
    sums = torch.zeros(4, dtype=torch.float64)  # nats, tokens, nats on text tokens, bytes
    if lockstep:
        batches = list(batches)
        idle = (torch.zeros((1, 1), dtype=torch.long, device=d.device),
                torch.full((1, 1), -1, dtype=torch.long, device=d.device))
        batches += [idle] * (max(d.gather(len(batches))) - len(batches))
    for x, y in batches:
        with amp, eval_mode(model):
            logits, _ = model(x, y)
        y = y.flatten()
        nats = F.cross_entropy(logits.float().flatten(0, 1), y, reduction="none", ignore_index=-1)
        scored = y != -1
        nbytes = token_bytes[y.clamp(min=0)] * scored
        sums += torch.stack([nats.sum(), scored.sum(), nats[nbytes > 0].sum(), nbytes.sum()]).double().cpu()
    d.all_sum(sums)
    nats, n, text_nats, nbytes = sums.tolist()
    return (nats / n if n else float("nan")), (text_nats / math.log(2) / nbytes if nbytes else float("nan"))


def window_batches(tokens: np.ndarray, offsets: np.ndarray, T: int, B: int, device
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of up to B windows of T tokens starting at ``offsets`` (see ``eval_offsets``)."""
    for i in range(0, len(offsets), B):
        yield get_batch(tokens, offsets[i:i + B], T, device)
