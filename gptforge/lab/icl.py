"""In-context copying, checkpoint by checkpoint: does the model predict a span better the second time
it reads it? (`gptforge probe icl`)

The probe feeds ``n`` spans of ``length`` tokens drawn uniformly at random from the tokenizer's
ordinary ids (special tokens left out), each twice in a row, after ``<|endoftext|>`` when the
tokenizer has one: ``[eot, x0 .. x(L-1), x0 .. x(L-1)]``. Random tokens cannot be predicted from
what a model learnt about the language, only by looking back: the loss on the first copy is about
ln V or worse, and a model that copies (induction heads: a head that finds the earlier occurrence of
the current token and predicts what followed it) drives the loss on the second copy towards 0. The
*induction score* is the drop, first-copy loss minus second-copy loss, in nats per token (Olsson et
al. 2022, "In-context learning and induction heads", which measures it on repeated random tokens
too). Scored in each copy: the predictions of x1 .. x(L-1) (x0 of the second copy follows x(L-1),
which never preceded anything, so nothing in the context predicts it). A bigram model sees only the
current token, so its score is 0 up to noise.

Each checkpoint a run keeps (``RUN/ckpt/step_*``; ``keep_last`` decides how many) is scored, so the
table and the plot show at which step, and for which run, copying appears. The same spans (``seed``)
score every checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptforge.checkpoint import STEP_DIR, find_checkpoint, load_checkpoint
from gptforge.errors import UserError
from gptforge.io import atomic_write
from gptforge.tokenizer import load_tokenizer


@dataclass
class CopyScore:
    """One checkpoint's result. Losses in nats per token: ``first`` on the first copy of the spans,
    ``second`` on the second, ``score`` = first - second."""

    run: str
    checkpoint: str
    step: int
    tokens: int
    params: int
    first: float
    second: float
    score: float


def random_spans(vocab_size: int, special_ids: set[int], n: int = 32, length: int = 50,
                 seed: int = 0) -> torch.Tensor:
    """(n, length) int64: token ids drawn uniformly from ``range(vocab_size)`` minus ``special_ids``.

    Raises:
        UserError: fewer than two ordinary ids to draw from.
    """
    ordinary = np.array([i for i in range(vocab_size) if i not in special_ids], dtype=np.int64)
    if len(ordinary) < 2:
        raise UserError(f"the vocabulary has {len(ordinary)} ordinary token(s); copying needs at least 2")
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.choice(ordinary, size=(n, length)))


@torch.no_grad()
def copy_losses(model: torch.nn.Module, spans: torch.Tensor, bos: int | None = None) -> tuple[float, float]:
    """(first-copy loss, second-copy loss), mean nats per token, of ``model`` on ``spans`` (n, L) int64
    fed as ``[bos, span, span]`` (module docstring; ``bos`` None: ``[span, span]``). The model's
    ``forward(idx (B, T)) -> (logits (B, T, V), loss)`` must take 2L - 1 (+1 with ``bos``) tokens.

    Raises:
        UserError: spans shorter than 2 tokens.
    """
    n, L = spans.shape
    if L < 2:
        raise UserError(f"spans of {L} token(s): copying needs at least 2")
    device = next(model.parameters()).device
    head = [] if bos is None else [torch.full((n, 1), bos, dtype=torch.long)]
    seq = torch.cat([*head, spans, spans], 1).to(device)
    logits, _ = model(seq[:, :-1])
    nll = F.cross_entropy(logits.float().transpose(1, 2), seq[:, 1:], reduction="none")  # (n, 2L - 1 + o)
    o = len(head)  # nll[:, j] is the loss of seq[:, j + 1]
    return nll[:, o:o + L - 1].mean().item(), nll[:, o + L:o + 2 * L - 1].mean().item()


def checkpoints(path: str | os.PathLike) -> list[Path]:
    """The checkpoint directories of a run (``RUN/ckpt/step_*``, by step), or ``[path]`` when it is one.

    Raises:
        UserError: no such directory, or a run without checkpoints.
    """
    p = Path(path)
    if (p / "trainer.json").exists():
        return [p]
    root = p / "ckpt"
    found = sorted((int(m.group(1)), c) for c in root.iterdir() if (m := STEP_DIR.match(c.name))
                   and (c / "trainer.json").exists()) if root.is_dir() else []
    if not found:
        find_checkpoint(p)  # raises the usual message for a missing or empty run
    return [c for _, c in found]


def probe(runs: list[str], n: int = 32, length: int = 50, seed: int = 0, device: str = "cpu",
          progress=None) -> list[CopyScore]:
    """Score every checkpoint of every run in ``runs`` (run or checkpoint directories). ``length`` is
    cut to what the model's context holds; ``progress(text)`` is called after each checkpoint.

    Raises:
        UserError: a missing or unreadable run or checkpoint.
    """
    out = []
    for run in runs:
        for ck in checkpoints(run):
            model, state = load_checkpoint(ck, device=device)
            tok = load_tokenizer(ck / "tokenizer.json")
            bos = tok.eot_id
            L = min(length, (model.config.block_size + (bos is None)) // 2)
            spans = random_spans(model.config.vocab_size, set(tok.special_tokens.values()), n, L, seed)
            first, second = copy_losses(model, spans, bos)
            params = state.num_params or sum(p.numel() for p in model.parameters())
            out.append(CopyScore(str(run), ck.name, state.step, state.tokens, params, first, second,
                                 first - second))
            if progress:
                progress(f"{run} {ck.name}: first copy {first:.3f}, second {second:.3f} nats/token")
    return out


def table(rows: list[CopyScore]) -> str:
    """A markdown table of the scores."""
    lines = ["| run | step | tokens | params | 1st copy | 2nd copy | induction score |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.run} | {r.step:,} | {r.tokens:,} | {r.params:,} | {r.first:.3f} | {r.second:.3f} | "
              f"**{r.score:.3f}** |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[CopyScore], out: str | os.PathLike) -> Path:
    """A PNG at ``out``: the induction score (nats/token) against the training step, one line per run."""
    import matplotlib

    from gptforge.train.plot import save_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run in enumerate(dict.fromkeys(r.run for r in rows)):
        pts = [(r.step, r.score) for r in rows if r.run == run]
        ax.plot(*zip(*pts, strict=True), marker="o", color=f"C{i % 10}", label=Path(run).name or run)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="training step", ylabel="induction score: 1st - 2nd copy loss (nats/token)",
           title="in-context copying of random token spans")
    return save_png(fig, (ax,), Path(out))


def write(rows: list[CopyScore], out_dir: str | os.PathLike, note: str = "") -> Path:
    """``icl.md`` (the table), ``icl.json`` (the rows) and ``icl.png`` (the plot) in ``out_dir``;
    returns the directory."""
    import json

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(d / "icl.md", f"# In-context copying\n\n{note}\n\n{table(rows)}\n")
    atomic_write(d / "icl.json", json.dumps([asdict(r) for r in rows], indent=1))
    plot(rows, d / "icl.png")
    return d
