"""Curriculum sampling for pretraining (``sampling = "curriculum"``, opt-in): spend the steps on text
the model is still learning; skim what it already predicts well and what it can never predict.

Mindermann et al. (2022, "Prioritized Training on Points that are Learnable, Worth Learning, and Not
Yet Learnt", RHO-LOSS) sort training data three ways: *learnt* (low loss, nothing left to gain),
*noise* (high loss that training does not lower: random ids, hashes, scrambled text) and
*learnable, not yet learnt* (loss that falls when trained on). RHO-LOSS tells them apart with a
second model trained on held-out data; this sampler uses a cheaper signal that needs no second
model and no second forward pass: whether a piece of data's own loss is still falling, faster than
the model's loss on everything it trains on. That is *learning progress*, the curriculum signal of
Graves et al. (2017, "Automated Curriculum Learning for Neural Networks"), measured as the gap
between a slow and a fast moving average of the loss as in Kanitscheider et al. (2021,
"Multi-task curriculum learning in a complex, visual, hard-exploration domain: Minecraft").

The rule, per chunk of the train split (``chunk_windows`` windows of T tokens each):

- each row trained on gives its loss x (mean nats per target token, from the training forward pass:
  the loss function returns it per row), *detrended* by the running mean loss g of all rows
  trained on lately (an EMA over micro-batches, ``GLOBAL_ALPHA``): x' = x - g. A chunk that follows
  the model's general improvement keeps x' level; noise, whose loss stops falling once its floor is
  reached, and text already learnt, which sits at its floor, see x' rise as g keeps falling;
- the chunk keeps a fast and a slow EMA of x' over its visits (``FAST_ALPHA``, ``SLOW_ALPHA``;
  each starts as the plain mean of the visits so far, so one early reading does not dominate);
  learning progress ``lp = slow - fast`` is positive while x' falls (the chunk is being learnt
  faster than the average), negative while it rises (noise, learnt), about 0 otherwise;
- a chunk is drawn with probability ``P(c) = u / C + (1 - u) * w_c / sum(w)``, where
  ``w_c = exp(lp_c / tau)``, tau the standard deviation of lp over the chunks seen at least twice
  (so the weights do not depend on the loss scale; a chunk one tau below average gets e^-1 of the
  average weight), and ``w_c = 1`` (lp = 0, the average) for chunks seen fewer than twice. The
  uniform share ``u`` (``curriculum_mix``, default 0.5) keeps every chunk visited, so unseen chunks get a
  first reading and a chunk misjudged early gets a second one;
- a drawn chunk contributes one window at a uniformly random offset inside it.

Determinism and resume: micro-batch ``index = (step * accum + micro) * world + rank`` draws with
``numpy.random.default_rng([seed, index])`` from the table as it stands, so a run is deterministic
for a seed; the table (``state_arrays()``) is saved in every checkpoint (``sampler.safetensors``)
and restored on resume, so a resumed run continues bit for bit on CPU, as with the other samplers.
A batch is *not* a pure function of (seed, index) alone: it depends on every loss seen before it,
so ``gptforge inspect batch`` cannot recompute it. One process only: under DDP each rank would see
only its own rows' losses (refused in ``gptforge.train.session.setup``).

Measured (bench/README.md, bench/curriculum_cpu.py): on Shakespeare with 5% injected noise and a
budget under one pass over the data, it does not help. Val bpb ends 0.8% worse than uniform
sampling, and the noise is not skipped: each chunk is seen ~5 times, too few to judge its
progress. Keep the default (``random``) unless the data is revisited many times.

Cost: one (B, T) cross-entropy without reduction instead of the mean (same FLOPs) and, per
micro-batch, O(C) numpy work to form P (C ~ 1,500 chunks on the built-in corpus: microseconds).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gptforge.train.batches import get_batch

FAST_ALPHA = 0.5  # fast EMA of a chunk's detrended loss: about the last 2 visits
SLOW_ALPHA = 0.1  # slow EMA: about the last 10 visits (a plain mean of the visits until the 10th)
GLOBAL_ALPHA = 0.2  # running mean of all rows' losses: about the last 5 micro-batches (little lag
#                     behind the steep early fall of the loss, yet an average of ~10 batches' rows)


class CurriculumBatches:
    """Windows of a token split drawn by learning progress: ``get(index, device) -> (x, y)`` and
    ``loss(model, (x, y)) -> (loss, {})`` (a scalar, nats per target token).

    tokens: the split (uint16/uint32 memmap); B, T: windows per micro-batch and their length;
    seed: as for ``batch_offsets``; chunk: windows per chunk (a chunk is ``chunk * T`` tokens; the
    split's last partial chunk is never drawn); uniform: the share of probability spread uniformly.

    ``get`` remembers the chunks of the batch it returns; ``loss`` on that same batch (the training
    loop calls it next) records each row's loss against its chunk. A batch it did not hand out
    (a copy, a crop) is scored but changes nothing.

    Table (float64 unless noted, shape (C,)): ``fast``, ``slow`` (EMAs of detrended loss, nats per
    token; NaN before the first visit), ``visits`` (int64), and ``global`` (shape (1,), the running
    mean loss; NaN before the first batch).
    """

    def __init__(self, tokens: np.ndarray, B: int, T: int, seed: int, chunk: int = 8, uniform: float = 0.5):
        self.tokens, self.B, self.T, self.seed, self.uniform = tokens, B, T, seed, uniform
        self.chunk_tokens = chunk * T
        self.n_chunks = (len(tokens) - 1) // self.chunk_tokens
        if self.n_chunks < 1:
            raise ValueError(f"the split has {len(tokens)} tokens, fewer than one curriculum chunk "
                             f"(chunk_windows x block_size + 1 = {self.chunk_tokens + 1})")
        C = self.n_chunks
        self.fast = np.full(C, np.nan)
        self.slow = np.full(C, np.nan)
        self.visits = np.zeros(C, dtype=np.int64)
        self.global_loss = np.full(1, np.nan)
        self._handed_out: tuple[torch.Tensor, np.ndarray] | None = None

    # --- drawing ------------------------------------------------------------------------------
    def probabilities(self) -> np.ndarray:
        """P(c) for every chunk (float64, shape (C,), sums to 1): the rule of the module docstring."""
        C = self.n_chunks
        lp = self.slow - self.fast
        known = self.visits >= 2
        w = np.ones(C)
        if known.sum() >= 2:
            tau = float(lp[known].std())
            if tau > 0:
                z = np.clip(lp[known] / tau, -20.0, 20.0)  # exp stays finite whatever the losses
                w[known] = np.exp(z)
        return self.uniform / C + (1.0 - self.uniform) * w / w.sum()

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, window start offsets), both int64 of shape (B,), of micro-batch ``index``."""
        rng = np.random.default_rng([self.seed, index])
        chunks = rng.choice(self.n_chunks, size=self.B, p=self.probabilities())
        # a window is T + 1 tokens; it starts anywhere that keeps it inside its chunk (+1 token)
        starts = chunks * self.chunk_tokens + rng.integers(0, self.chunk_tokens - self.T + 1, size=self.B)
        return chunks.astype(np.int64), starts.astype(np.int64)

    def get(self, index: int, device="cpu"):
        chunks, starts = self.draw(index)
        x, y = get_batch(self.tokens, starts, self.T, device)
        self._handed_out = (x, chunks)
        return x, y

    # --- learning from the losses ----------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, dict]:
        """``(loss, {})`` as ``lm_loss``: the mean next-token cross-entropy of ``model`` on ``batch``
        (a scalar, nats per target token), from per-row losses that, for a batch ``get`` handed out,
        update the table."""
        x, y = batch
        logits, _ = model(x)  # (B, T, V) float32
        per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none", ignore_index=-1)
        scored = (y != -1).float()
        per_row = (per_token.view_as(scored) * scored).sum(1) / scored.sum(1).clamp(min=1)  # (B,)
        if self._handed_out is not None and self._handed_out[0] is x:
            self.record(self._handed_out[1], per_row.detach().float().cpu().numpy())
            self._handed_out = None
        return (per_token * scored.flatten()).sum() / scored.sum().clamp(min=1), {}

    def record(self, chunks: np.ndarray, losses: np.ndarray) -> None:
        """Update the table with one micro-batch: row i, from chunk ``chunks[i]``, had mean loss
        ``losses[i]`` (nats per token). Non-finite losses are ignored."""
        ok = np.isfinite(losses)
        chunks, losses = chunks[ok], losses[ok].astype(np.float64)
        if len(losses) == 0:
            return
        g = self.global_loss[0]
        g = losses.mean() if math.isnan(g) else g + GLOBAL_ALPHA * (losses.mean() - g)
        self.global_loss[0] = g
        for c, x in zip(chunks.tolist(), (losses - g).tolist(), strict=True):  # a chunk may repeat
            n = self.visits[c] + 1  # this visit's number
            if n == 1:
                self.fast[c] = self.slow[c] = x
            else:  # the mean of the visits so far until 1/n falls below alpha (no pull to the first one)
                self.fast[c] += max(FAST_ALPHA, 1 / n) * (x - self.fast[c])
                self.slow[c] += max(SLOW_ALPHA, 1 / n) * (x - self.slow[c])
            self.visits[c] = n

    # --- checkpoints ------------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The table, for a checkpoint (copies)."""
        return {"fast": self.fast.copy(), "slow": self.slow.copy(), "visits": self.visits.copy(),
                "global": self.global_loss.copy()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray], where: str = "checkpoint") -> None:
        """Restore the table from ``state_arrays()``'s output.

        Raises:
            ValueError: missing keys, or arrays of another shape or dtype (another split or chunk size).
        """
        for k, mine in self.state_arrays().items():
            a = arrays.get(k)
            if a is None or a.shape != mine.shape or a.dtype != mine.dtype:
                got = "missing" if a is None else f"{a.dtype} {a.shape}"
                raise ValueError(f"{where}: curriculum table {k!r} is {got}, expected {mine.dtype} "
                                 f"{mine.shape} (a different train split or chunk_windows?)")
        self.fast, self.slow = arrays["fast"].copy(), arrays["slow"].copy()
        self.visits, self.global_loss = arrays["visits"].copy(), arrays["global"].copy()
