"""Loss curves from ``metrics.jsonl``: several runs overlaid in one PNG."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gptforge.errors import UserError
from gptforge.io import atomic_write


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of ``RUN_DIR/metrics.jsonl`` (a line cut short by a crash is skipped).

    Raises:
        UserError: no metrics file in ``run_dir``.
    """
    f = Path(run_dir) / "metrics.jsonl"
    if not f.exists():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a gptforge pretraining run directory?)")
    out = []
    for line in f.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and "step" in r:
            out.append(r)
    return out


def plot_runs(run_dirs: list[str], out: str | os.PathLike) -> Path:
    """Plot train loss (thin) and val loss (markers) in nats/token, and val bits/byte, against
    training tokens for each run; write a PNG to ``out`` (exactly that path) and return it.

    Raises:
        UserError: ``out`` does not end in .png, names a directory, or a run has no metrics.
    """

    import matplotlib

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"{out}: the plot is a PNG; give a file name ending in .png")
    if out.is_dir():
        raise UserError(f"{out}: is a directory; give a file name ending in .png")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, run in enumerate(run_dirs):
        recs = read_metrics(run)
        color = f"C{i % 10}"
        label = Path(run).name or str(run)
        tr = [(r["tokens"], r["train_loss"]) for r in recs if r.get("train_loss") is not None]
        va = [(r["tokens"], r["val_loss"], r.get("val_bpb")) for r in recs if r.get("val_loss") is not None]
        if tr:
            ax_loss.plot(*zip(*tr, strict=True), color=color, alpha=0.35, lw=0.8)
        if va:
            ax_loss.plot([v[0] for v in va], [v[1] for v in va], "o-", color=color, ms=3,
                         label=f"{label} val")
            bpb = [(v[0], v[2]) for v in va if v[2] is not None]
            if bpb:
                ax_bpb.plot(*zip(*bpb, strict=True), "o-", color=color, ms=3, label=label)
        if tr:
            ax_loss.plot([], [], color=color, alpha=0.35, label=f"{label} train")
    ax_loss.set(xlabel="tokens", ylabel="loss (nats/token)", title="loss")
    ax_bpb.set(xlabel="tokens", ylabel="bits per byte", title="validation bits per byte")
    return save_png(fig, (ax_loss, ax_bpb), out)


def save_png(fig, axes, out: Path) -> Path:
    """Grid and legend on ``axes``, then ``fig`` written atomically to ``out`` as a PNG (and closed)."""
    import io

    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, buf.getvalue())
