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
take disjoint, adjacent slices. ``packed`` (``PackedBatches``): rows that each start at a
document start, documents placed best-fit, none padded (nanochat's BOS-aligned best-fit loader).
``curriculum`` (opt-in, gptforge/train/curriculum.py) draws windows by the losses seen so far, so
its batches also depend on the run's history (saved in checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gptforge.data.shards import document_spans
from gptforge.errors import UserError


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
    return _to_device(np.stack([tokens[o:o + T + 1] for o in offsets]).astype(np.int64), device)


def _to_device(rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) = (rows[:, :-1], rows[:, 1:]) on ``device``; rows int64 (B, T + 1)."""
    xy = torch.from_numpy(rows)
    if torch.device(device).type == "cuda":
        xy = xy.pin_memory().to(device, non_blocking=True)
    else:
        xy = xy.to(device)
    return xy[:, :-1], xy[:, 1:]


def batch_index(step: int, micro: int, accum: int, rank: int, world: int) -> int:
    """The run-wide number of micro-batch ``micro`` of optimizer ``step`` on process ``rank``."""
    return (step * accum + micro) * world + rank


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


#: documents a micro-batch of packed rows chooses among. The buffer is drawn afresh for every
#: micro-batch (so a batch is a pure function of (seed, index)); a large one would let the short
#: documents that fit the gaps crowd out the long ones for good, as a stream's buffer does not.
PACK_BUFFER = 16


class PackedBatches:
    """BOS-aligned best-fit rows of a multi-document split: ``get(index, device) -> (x, y)``, int64
    (B, T), and ``loss(model, (x, y)) -> (loss, {"cropped": share})``.

    Documents are the shards' runs between end-of-text ids (``document_spans``), each with the
    end-of-text id in front of it as its BOS, so every row starts with BOS and the first text
    token of a document is a target. Micro-batch ``index`` draws documents uniformly with
    replacement (``np.random.default_rng([seed, index])``) and fills each of its B rows of T + 1
    tokens: the oldest document drawn opens the row, then the largest buffered document that
    fits the room left is placed, again and again; when none fits, the shortest is cropped to fill
    the row exactly (nanochat, nanochat/dataloader.py, ``..._bos_bestfit``). No padding; attention
    crosses the documents of a row, as there. Unlike nanochat's stream, the buffer starts afresh
    each micro-batch: the oldest-first opener keeps long documents in the mix, which a stream's
    buffer keeps by holding on to them until they are the shortest.

    ``cropped``: the share of the document tokens taken that did not fit (the cut-off ends);
    ``loss`` reports that of the micro-batch ``get`` handed out last (0 for any other batch).

    Raises:
        UserError: no end-of-text id, or a split with fewer than 2 non-empty documents.
    """

    def __init__(self, tokens: np.ndarray, B: int, T: int, seed: int, eot: int | None):
        self.tokens, self.B, self.T, self.seed, self.eot = tokens, B, T, seed, eot
        spans = document_spans(tokens, eot) if eot is not None else np.zeros((1, 2), dtype=np.int64)
        spans = spans[spans[:, 1] > spans[:, 0]]  # an empty document has nothing to predict
        if len(spans) < 2:
            raise UserError("sampling packed needs a corpus of several documents (separated by "
                            "<|endoftext|>); these shards hold one: use sampling random")
        self.starts = spans[:, 0]
        self.lengths = spans[:, 1] - spans[:, 0] + 1  # + the BOS
        self._handed_out: tuple[torch.Tensor, float] | None = None

    def rows(self, index: int) -> tuple[np.ndarray, int, int]:
        """``(rows, cropped, taken)`` of micro-batch ``index``: rows int64 (B, T + 1), each starting
        with BOS; ``taken`` the tokens of the documents placed (BOS included), ``cropped`` those of
        them cut off at the rows' ends."""
        rng = np.random.default_rng([self.seed, index])
        cap, n_docs = self.T + 1, len(self.starts)
        buf = rng.integers(0, n_docs, size=PACK_BUFFER).tolist()  # oldest first
        out = np.empty((self.B, cap), dtype=np.int64)
        cropped = taken = 0
        for r in range(self.B):
            pos = 0
            while pos < cap:
                room = cap - pos
                j = 0  # the oldest document opens the row, whatever its length
                if pos:
                    lens = self.lengths[buf]
                    fits = lens <= room
                    j = int(np.argmax(np.where(fits, lens, 0))) if fits.any() else int(np.argmin(lens))
                d = buf.pop(j)
                buf.append(int(rng.integers(0, n_docs)))
                length = int(self.lengths[d])
                n = min(length, room)
                out[r, pos] = self.eot
                out[r, pos + 1:pos + n] = self.tokens[self.starts[d]:self.starts[d] + n - 1]
                cropped, taken, pos = cropped + length - n, taken + length, pos + n
        return out, cropped, taken

    def get(self, index: int, device="cpu"):
        rows, cropped, taken = self.rows(index)
        x, y = _to_device(rows, device)
        self._handed_out = (x, cropped / taken)
        return x, y

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``lm_loss`` and ``{"cropped": share}`` (a 0-dim float32 tensor) of the batch."""
        loss, _ = lm_loss(model, batch)
        share = self._handed_out[1] if self._handed_out and self._handed_out[0] is batch[0] else 0.0
        return loss, {"cropped": torch.tensor(share)}

    def describe(self, batches: int = 8) -> str:
        """One line for the start of a run: documents, long ones, and the share cropped in the
        first ``batches`` micro-batches."""
        cap = self.T + 1
        long = self.lengths[self.lengths > cap].sum() / self.lengths.sum()
        counts = np.array([self.rows(i)[1:] for i in range(batches)]).sum(0)
        median = int(np.median(self.lengths))
        return (f"packed rows: {len(self.starts):,} documents (with BOS: median {median:,} tokens; "
                f"{long:.0%} of the tokens in documents longer than T + 1 = {cap:,}); "
                f"{counts[0] / counts[1]:.1%} of the document tokens cropped in the first {batches} "
                "micro-batches (per step: train_cropped in metrics.jsonl)")


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, {})``: the next-token cross-entropy of ``model`` on ``batch = (x, y)``, a scalar in
    nats per scored target token, and no extra stats (the loss_fn contract of gptforge.train.step)."""
    x, y = batch
    _, loss = model(x, y)
    return loss, {}
