"""`gptforge inspect batch`: the exact (x, y) the trainer feeds at a step, decoded.

"The correct place to examine your training data is immediately before it feeds into the network"
(Karpathy, "A Recipe for Training Neural Networks"). A training batch is a pure function of the
config and (step, micro, rank, world) (gptforge/train/batches.py, gptforge/chat/sft.py), so it can
be recomputed from the config alone, before training or after, without touching the run.

A decoded row is the T + 1 token sequence the row covers (x, then the last target), each token's
UTF-8 bytes and whether it is a trained target (``y`` not -1 at the position before it). The bytes
of the inputs are exactly ``tok.decode_bytes(x[row])``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch

from gptforge.errors import UserError
from gptforge.explore.setup import accum_steps, train_data
from gptforge.train.batches import batch_index
from gptforge.train.config import TrainConfig


@dataclass
class DecodedRow:
    """One row of a batch. ids: the T inputs, then the last target when it is scored (int);
    pieces: the UTF-8 bytes of each id (special tokens as their names); trained: per id, whether it
    is a target the loss sees (the first input is never a target); has_last_target: ids ends with
    the last target (y[row, -1]), which is not an input."""

    ids: list[int]
    pieces: list[bytes]
    trained: list[bool]
    has_last_target: bool = False

    @property
    def input_bytes(self) -> bytes:
        """The bytes of x[row] (the inputs only)."""
        n = len(self.pieces) - (1 if self.has_last_target else 0)
        return b"".join(self.pieces[:n])


def batch_at(cfg: TrainConfig, step: int, micro: int = 0, rank: int = 0, world: int = 1):
    """``(x, y, tokenizer)``: the micro-batch ``micro`` of optimizer step ``step`` (0-based: the batch
    the step-``step`` update is computed from) that process ``rank`` of ``world`` trains on.
    x, y: int64 (B, T), y = -1 where not scored.

    Raises:
        UserError: unreadable data or base checkpoint; a micro/rank out of range.
    """
    accum = accum_steps(cfg, world)
    if not 0 <= micro < accum:
        raise UserError(f"--micro {micro}: this config takes {accum} micro step(s) per step (0..{accum - 1})")
    if not 0 <= rank < world:
        raise UserError(f"--rank {rank}: the run has {world} process(es)")
    if step < 0:
        raise UserError(f"--step {step}: steps count from 0")
    if cfg.sampling == "curriculum":
        raise UserError("this run samples by curriculum: its batches depend on every loss seen before "
                        "them, so they cannot be recomputed from the step")
    data, tok = train_data(cfg)
    x, y = data.batches.get(batch_index(step, micro, accum, rank, world), "cpu")
    return x, y, tok


def decode_batch(tok, x: torch.Tensor, y: torch.Tensor) -> list[DecodedRow]:
    """Decode every row of (x, y) (int64 (B, T)) with ``tok``."""
    rows = []
    for xr, yr in zip(x.tolist(), y.tolist(), strict=True):
        last = yr[-1] != -1
        ids = xr + ([yr[-1]] if last else [])
        trained = [False] + [t != -1 for t in yr[:len(ids) - 1]]
        rows.append(DecodedRow(ids, [tok.decode_bytes([i]) for i in ids], trained, last))
    return rows


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def render_terminal(rows: list[DecodedRow], colour: bool = False, max_rows: int | None = None) -> str:
    """The rows as text. Where some targets are masked (SFT), trained tokens are green (``colour``)
    or between ⟦ and ⟧; every token trained (pretraining) prints plain."""
    out = []
    for r, row in enumerate(rows[:max_rows]):
        masked = not all(row.trained[1:])
        n = sum(row.trained)
        out.append(f"--- row {r}: {len(row.ids) - (1 if row.has_last_target else 0)} inputs, {n} trained "
                   "targets ---")
        parts, inside = [], False
        for piece, t in zip(row.pieces, row.trained, strict=True):
            s = _text(piece)
            if masked and not colour and t != inside:
                parts.append("⟦" if t else "⟧")
                inside = t
            parts.append(f"\033[32m{s}\033[0m" if masked and colour and t else s)
        if inside:
            parts.append("⟧")
        out.append("".join(parts))
    return "\n".join(out)


HTML_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
pre {{ white-space: pre-wrap; font-family: monospace; border: 1px solid #ccc; padding: .5em; }}
span.t {{ border-right: 1px solid #ddd; }}
span.y {{ background: #c8f0c8; }}
span.n {{ color: #888; }}
</style></head><body>
"""


def render_html(rows: list[DecodedRow], title: str) -> str:
    """A static HTML page (no scripts, no CDN): one box per row, token boundaries ruled, trained
    targets green, untrained grey; hover a token for its id. All text is escaped."""
    body = [HTML_HEAD.format(title=html.escape(title)), f"<h1>{html.escape(title)}</h1>",
            "<p>green: a target the loss sees; grey: not trained on (masked, or the first input).</p>"]
    for r, row in enumerate(rows):
        body.append(f"<h3>row {r}</h3><pre>")
        for pos, (i, piece, t) in enumerate(zip(row.ids, row.pieces, row.trained, strict=True)):
            body.append(f'<span class="t {"y" if t else "n"}" title="pos {pos} id {i}">'
                        f"{html.escape(_text(piece))}</span>")
        body.append("</pre>")
    body.append("</body></html>\n")
    return "".join(body)
