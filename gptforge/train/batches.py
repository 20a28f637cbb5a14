"""Batch sources for the training loop, and pretraining batches from memory-mapped token shards.

A batch source has ``get(index, device) -> batch``; the loop (loop.py) numbers every micro-batch of
the run, ``index = batch_index(step, micro, accum, rank, world) = (step * accum + micro) * world +
rank``, and hands what it gets to a loss function: ``(loss, stats) = loss_fn(model, batch)``.
Pretraining's source is ``PretrainBatches`` with ``lm_loss``; SFT conversations and preference
pairs plug in the same way. A training batch is a pure function of ``(seed, index)``. So:

- a run is deterministic for a seed, and resuming at step k needs no saved loader state;
- DDP ranks read different windows (distinct ``index``), and 2 ranks x 1 micro step see exactly the
  batches of 1 rank x 2 micro steps: the basis of the DDP-equivalence test.

``random``: B windows at uniformly random offsets (nanoGPT). ``sequential``: consecutive windows,
stepping through the split in order and wrapping around at the end; micro-batches and ranks
take disjoint, adjacent slices. ``curriculum`` (opt-in, gptforge/train/curriculum.py) draws windows
by the losses seen so far, so its batches also depend on the run's history (saved in checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def batch_offsets(n_tokens: int, B: int, T: int, seed: int, index: int, sampling: str) -> np.ndarray:
    """Start offsets (int64, shape (B,)) of the B windows of micro-batch number ``index``.

    Each window covers T + 1 tokens (inputs and the next-token targets), so offsets lie in
    ``[0, n_tokens - T - 1]``.

    Raises:
        ValueError: the split holds fewer than T + 1 tokens; or unknown ``sampling``.
    """
    span = n_tokens - T  # number of valid offsets
    if span < 1:
        raise ValueError(f"the split has {n_tokens} tokens, fewer than block_size + 1 = {T + 1}")
    if sampling == "random":
        rng = np.random.default_rng([seed, index])
        return rng.integers(0, span, size=B, dtype=np.int64)
    if sampling == "sequential":
        return ((index * B + np.arange(B, dtype=np.int64)) * T) % span
    raise ValueError(f"unknown sampling {sampling!r}")


def get_batch(tokens: np.ndarray, offsets: np.ndarray, T: int, device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and targets y, both int64 of shape (B, T), with y[:, t] = x[:, t + 1] in the text."""
    rows = np.stack([tokens[o:o + T + 1] for o in offsets]).astype(np.int64)
    xy = torch.from_numpy(rows)
    if torch.device(device).type == "cuda":
        xy = xy.pin_memory().to(device, non_blocking=True)
    else:
        xy = xy.to(device)
    return xy[:, :-1], xy[:, 1:]


def batch_index(step: int, micro: int, accum: int, rank: int, world: int) -> int:
    """The run-wide number of micro-batch ``micro`` of optimizer ``step`` on process ``rank``."""
    return (step * accum + micro) * world + rank


def train_batch(tokens: np.ndarray, B: int, T: int, seed: int, sampling: str, step: int, micro: int,
                accum: int, rank: int, world: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) that ``rank`` trains on in micro step ``micro`` of optimizer ``step``."""
    index = batch_index(step, micro, accum, rank, world)
    return get_batch(tokens, batch_offsets(len(tokens), B, T, seed, index, sampling), T, device)


def eval_offsets(n_tokens: int, T: int, eval_tokens: int) -> np.ndarray:
    """Offsets of the fixed validation subset: ceil(eval_tokens / T) windows spread evenly over the
    split (the same for every run, seed and device count; capped at what the split holds).
    ``eval_tokens == 0`` means the whole split: non-overlapping windows at 0, T, 2T, ..., so every
    target but the last < T tokens is scored exactly once.

    Raises:
        ValueError: the split holds fewer than T + 1 tokens.
    """
    span = n_tokens - T
    if span < 1:
        raise ValueError(f"the split has {n_tokens} tokens, fewer than block_size + 1 = {T + 1}")
    if eval_tokens == 0:
        return np.arange(0, span, T, dtype=np.int64)
    n = max(1, min(-(-eval_tokens // T), span))
    return np.linspace(0, span - 1, n).round().astype(np.int64)


@dataclass
class PretrainBatches:
    """Windows of a token split: ``get(index, device) -> (x, y)``, int64 (B, T).

    tokens: the split (uint16/uint32 memmap); B, T: windows per micro-batch and their length;
    seed, sampling: as in ``batch_offsets``.
    """

    tokens: np.ndarray
    B: int
    T: int
    seed: int
    sampling: str = "random"

    def get(self, index: int, device="cpu"):
        offsets = batch_offsets(len(self.tokens), self.B, self.T, self.seed, index, self.sampling)
        return get_batch(self.tokens, offsets, self.T, device)


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, {})``: the next-token cross-entropy of ``model`` on ``batch = (x, y)``, a scalar in
    nats per scored target token, and no extra stats (the loss_fn contract of gptforge.train.step)."""
    x, y = batch
    _, loss = model(x, y)
    return loss, {}
