"""Arena ratings from pairwise battles: Bradley-Terry maximum likelihood with bootstrap intervals, and
online Elo beside it, as the LMSYS Chatbot Arena computes them.

    >>> battles = read_battles("clean_battle.json")        # FastChat / LMSYS battle JSON
    >>> table = leaderboard(battles, rounds=1000, seed=0)  # list of Rating, best first

A battle is ``{"model_a": str, "model_b": str, "winner": "model_a" | "model_b" | "tie" |
"tie (bothbad)"}``. Source: Chiang et al. 2024, "Chatbot Arena: An Open Platform for Evaluating
LLMs by Human Preference", and the LMSYS leaderboard notebook (``compute_mle_elo``,
``compute_online_elo``, ``get_bootstrap_result`` in FastChat's ``elo_analysis.py``).

Bradley-Terry (BT). Model i has a rating R_i; it beats model j with probability

    P(i beats j) = 1 / (1 + 10 ** ((R_j - R_i) / 400))            (base 10, scale 400)

i.e. a logistic model in beta_i = ln(10) * R_i / 400. The ratings maximise the log-likelihood of
all battles, a tie counting as half a win for each side (LMSYS fits a logistic regression with
every battle duplicated and a tie made one A win plus one B win: the same thing). The likelihood
only sees differences, so the ratings are anchored afterwards: their mean is 1000, or the model
``anchor`` names is exactly 1000.

We fit it ourselves, by Newton's method on the convex negative log-likelihood (win counts per
ordered pair, so a step costs O(models^2) whatever the number of battles). A model that won (or
lost) every battle has an infinite maximum-likelihood rating; a tiny L2 penalty on beta
(``L2 = 1e-6`` times the number of battles) keeps it finite. On any data where the MLE exists it
moves ratings by far less than 0.01 points (the test compares with scikit-learn's unpenalised fit
to 1 point).

Intervals: the LMSYS bootstrap: resample the battles with replacement ``rounds`` times (seeded),
refit, and take the 2.5% and 97.5% quantiles of each model's rating. Rank: 1 + the number of models
whose lower bound is above this model's upper bound (LMSYS's "rank (UB)"), so models whose
intervals overlap share a rank.

Online Elo: battles in order (their ``tstamp`` when every battle has one, else as given), each one
moving both ratings by K * (score - expected), K = 4, base 10, scale 400, from 1000. It depends on
the order, which is why the leaderboard uses BT; it is shown beside it for comparison.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gptforge.errors import UserError
from gptforge.io import atomic_open, read_text

SCORE = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}  # A's score, by winner
WINNERS = tuple(SCORE)
BASE, SCALE, INIT = 10.0, 400.0, 1000.0
K_ELO = 4.0
L2 = 1e-6  # per battle, on beta (natural-log units); see the module docstring


@dataclass
class Rating:
    """One leaderboard row. rating, lower, upper, elo: rating points; battles: how many the model
    fought; wins, ties, losses: from its own side."""

    rank: int
    model: str
    rating: float
    lower: float
    upper: float
    battles: int
    wins: int
    ties: int
    losses: int
    elo: float

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# reading battles

def check_battle(b, where: str) -> dict:
    """``b`` as ``{"model_a", "model_b", "winner"}`` (extra keys kept), or a UserError naming ``where``."""
    if not isinstance(b, dict):
        raise UserError(f"{where}: a battle must be a JSON object, not {type(b).__name__}")
    for key in ("model_a", "model_b", "winner"):
        if key not in b:
            raise UserError(f"{where}: no {key!r} field")
    if not all(isinstance(b[k], str) and b[k] for k in ("model_a", "model_b")):
        raise UserError(f"{where}: model_a and model_b must be non-empty strings")
    if b["model_a"] == b["model_b"]:
        raise UserError(f"{where}: a model cannot battle itself ({b['model_a']!r})")
    if b["winner"] not in WINNERS:
        raise UserError(f"{where}: unknown winner {b['winner']!r} (expected one of {', '.join(WINNERS)})")
    return b


def read_battles(path: str | Path) -> list[dict]:
    """Battles from a FastChat/LMSYS battle file: one JSON array of battle objects
    (``clean_battle_*.json``), or JSON lines (one battle per line).

    Raises:
        UserError: missing or unreadable file, malformed JSON, or a bad battle; the message names
            the file and the row (array index, or line number for JSON lines).
    """
    p = Path(path)
    text = read_text(p, "battle file")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
        return [check_battle(b, f"{p}: row {i}") for i, b in enumerate(rows)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            b = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: line {n}: malformed JSON ({e.msg})") from None
        out.append(check_battle(b, f"{p}: line {n}"))
    return out


# ---------------------------------------------------------------------------------------------
# Bradley-Terry

def _index(battles: Sequence[dict]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Models (sorted names) and, per battle, int64 index of A and of B, and A's score (1, 0, 0.5)."""
    models = sorted({b["model_a"] for b in battles} | {b["model_b"] for b in battles})
    pos = {m: i for i, m in enumerate(models)}
    a = np.array([pos[b["model_a"]] for b in battles], dtype=np.int64)
    bb = np.array([pos[b["model_b"]] for b in battles], dtype=np.int64)
    return models, a, bb, np.array([SCORE[b["winner"]] for b in battles])


def win_matrix(a: np.ndarray, b: np.ndarray, score: np.ndarray, n_models: int,
               weights: np.ndarray | None = None) -> np.ndarray:
    """W (M, M) float64: W[i, j] = wins of i over j, a tie counting 0.5 to each; ``weights``
    (per battle, e.g. bootstrap counts) multiply each battle."""
    w = np.ones(len(a)) if weights is None else weights
    W = np.zeros((n_models, n_models))
    np.add.at(W, (a, b), w * score)
    np.add.at(W, (b, a), w * (1.0 - score))
    return W


def fit_bt(W: np.ndarray) -> np.ndarray:
    """Bradley-Terry strengths beta (M,) float64, mean 0, natural-log units (R = 400 / ln 10 * beta),
    maximising sum_ij W[i, j] * log sigmoid(beta_i - beta_j) - l2 / 2 * |beta|^2.

    Newton's method: the negative log-likelihood is convex; its Hessian is singular along the
    all-ones direction (only differences matter), so the step solves (H + 11^T / M) d = -g, which
    leaves the mean of beta at 0 since g sums to zero. ``l2`` is ``L2`` times the battles.
    """
    M, l2 = len(W), L2 * W.sum()
    N = W + W.T  # battles between i and j
    beta = np.zeros(M)
    ones = np.full((M, M), 1.0 / M)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(beta[:, None] - beta[None, :])))  # P(i beats j)
        # gradient of the log-likelihood: observed wins minus expected wins, per model
        g = (W - N * p).sum(axis=1) - l2 * beta
        H = N * p * (1.0 - p)  # Fisher information of each pair
        H = np.diag(H.sum(axis=1)) - H + l2 * np.eye(M)  # negative Hessian (a graph Laplacian + l2)
        step = np.linalg.solve(H + ones, g)
        # a plain Newton step can overshoot far from the optimum (a model with few battles): halve
        while np.abs(step).max() > 4.0:
            step = step / 2
        beta = beta + step
        beta -= beta.mean()
        if np.abs(g).max() < 1e-10 * max(1.0, W.sum()):
            break
    return beta


def _to_points(beta: np.ndarray, models: Sequence[str], anchor: str | None) -> np.ndarray:
    r = SCALE / math.log(BASE) * beta + INIT  # mean INIT
    if anchor is not None:
        r = r - r[list(models).index(anchor)] + INIT
    return r


def bt_ratings(battles: Sequence[dict], anchor: str | None = None) -> dict[str, float]:
    """Bradley-Terry ratings {model: points}: mean 1000, or ``anchor`` at exactly 1000.

    Raises:
        UserError: no battles, or ``anchor`` is not one of the models.
    """
    if not battles:
        raise UserError("no battles to rate")
    models, a, b, s = _index(battles)
    if anchor is not None and anchor not in models:
        raise UserError(f"--anchor {anchor}: no such model in the battles ({', '.join(models)})")
    r = _to_points(fit_bt(win_matrix(a, b, s, len(models))), models, anchor)
    return dict(zip(models, r.tolist(), strict=True))


def bootstrap(battles: Sequence[dict], rounds: int = 1000, seed: int = 0, anchor: str | None = None
              ) -> tuple[list[str], np.ndarray]:
    """(models, ratings (rounds, M) float64): BT ratings refit on ``rounds`` resamples of the battles
    (with replacement, as many as there are; numpy Generator seeded with ``seed``)."""
    models, a, b, s = _index(battles)
    rng = np.random.default_rng(seed)
    n = len(battles)
    out = np.empty((rounds, len(models)))
    for k in range(rounds):
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        out[k] = _to_points(fit_bt(win_matrix(a, b, s, len(models), counts)), models, anchor)
    return models, out


def online_elo(battles: Iterable[dict]) -> dict[str, float]:
    """Online Elo {model: points} after the battles in the order given (LMSYS ``compute_online_elo``)."""
    rating: dict[str, float] = {}
    for b in battles:
        ra, rb = rating.setdefault(b["model_a"], INIT), rating.setdefault(b["model_b"], INIT)
        ea = 1.0 / (1.0 + BASE ** ((rb - ra) / SCALE))
        delta = K_ELO * (SCORE[b["winner"]] - ea)  # B's score and expectation are 1 minus A's
        rating[b["model_a"]], rating[b["model_b"]] = ra + delta, rb - delta
    return rating


def leaderboard(battles: Sequence[dict], rounds: int = 1000, seed: int = 0, anchor: str | None = None
                ) -> list[Rating]:
    """The leaderboard, best first: BT rating, bootstrap 95% interval, rank, battle counts, online Elo.

    Raises:
        UserError: no battles, ``rounds`` < 1, or an unknown ``anchor``.
    """
    if rounds < 1:
        raise UserError(f"--rounds must be >= 1, not {rounds}")
    point = bt_ratings(battles, anchor)
    models, boot = bootstrap(battles, rounds, seed, anchor)
    lo, hi = np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)
    timed = all("tstamp" in b for b in battles)  # else the order given
    elo = online_elo(sorted(battles, key=lambda b: b["tstamp"]) if timed else battles)
    counts = {m: [0, 0, 0] for m in models}  # wins, ties, losses
    for b in battles:
        w = b["winner"]
        counts[b["model_a"]][0 if w == "model_a" else 2 if w == "model_b" else 1] += 1
        counts[b["model_b"]][0 if w == "model_b" else 2 if w == "model_a" else 1] += 1
    rows = []
    for i, m in enumerate(models):
        rank = 1 + sum(lo[j] > hi[i] for j in range(len(models)))
        wins, ties, losses = counts[m]
        rows.append(Rating(rank=int(rank), model=m, rating=point[m], lower=float(lo[i]), upper=float(hi[i]),
                           battles=wins + ties + losses, wins=wins, ties=ties, losses=losses, elo=elo[m]))
    return sorted(rows, key=lambda r: (-r.rating, r.model))


def format_table(rows: Sequence[Rating]) -> str:
    """The leaderboard as an aligned text table."""
    width = max([5] + [len(r.model) for r in rows])
    lines = [f"{'rank':>4}  {'model':<{width}}  {'rating':>7}  {'95% interval':>17}  {'battles':>7}  "
             f"{'W/T/L':>13}  {'Elo':>7}"]
    for r in rows:
        interval, wtl = f"{r.lower:.1f} .. {r.upper:.1f}", f"{r.wins}/{r.ties}/{r.losses}"
        lines.append(f"{r.rank:>4}  {r.model:<{width}}  {r.rating:>7.1f}  {interval:>17}  "
                     f"{r.battles:>7}  {wtl:>13}  {r.elo:>7.1f}")
    return "\n".join(lines)


def plot_ratings(rows: Sequence[Rating], path: str | Path, title: str = "Arena ratings (Bradley-Terry)"
                 ) -> Path:
    """A PNG of the ratings with their 95% intervals as error bars, best at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(rows)))
    y = np.arange(len(rows))
    x = np.array([r.rating for r in rows])
    err = np.array([[r.rating - r.lower for r in rows], [r.upper - r.rating for r in rows]])
    ax.errorbar(x, y, xerr=np.clip(err, 0, None), fmt="o", capsize=4)
    ax.set_yticks(y, [r.model for r in rows])
    ax.set_xlabel("rating (Bradley-Terry, 95% bootstrap interval)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
