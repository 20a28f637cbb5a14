"""Scaling laws: fit L(N, D) = E + A / N^alpha + B / D^beta to final losses (Chinchilla Approach 3) and
parabolas per compute budget (Approach 2), as plain functions usable alone.

Sources: Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv 2203.15556),
section 3.3 and appendix D.2: Huber loss (delta 1e-3) on the log of the predicted loss, L-BFGS from a
grid of starting points; Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"
(arXiv 2404.10102): the same fit, run to convergence, with bootstrap intervals.

Units: N parameters, D training tokens, L loss in nats per token, C FLOPs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

HUBER_DELTA = 1e-3  # Hoffmann et al.'s delta

# Hoffmann et al.'s grid of starts: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
# a, b in {0, 5, ..., 25} (A = exp(a), B = exp(b), E = exp(e))
START_GRID = np.array(list(itertools.product(np.arange(0, 30, 5.0), np.arange(0, 30, 5.0),
                                             np.arange(-1, 1.5, 0.5), np.arange(0, 2.5, 0.5),
                                             np.arange(0, 2.5, 0.5))))  # columns a, b, e, alpha, beta


@dataclass
class LawFit:
    """L(N, D) = E + A / N^alpha + B / D^beta (nats per token); objective: the Huber loss at the optimum."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = 0.0

    def loss(self, N, D):
        """Predicted loss (nats/token) at N parameters and D tokens (scalars or arrays)."""
        N, D = np.asarray(N, float), np.asarray(D, float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def optimal_ratio(self, C: float) -> float:
        """Compute-optimal tokens per parameter D/N at C FLOPs, taking C = 6 N D (Hoffmann et al. eq. 4):
        N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6) / N_opt,
        G = (alpha A / (beta B))^(1/(alpha+beta))."""
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n_opt = G * (C / 6) ** (self.beta / (self.alpha + self.beta))
        return (C / 6) / n_opt / n_opt


def _huber_terms(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """(Huber loss, its derivative) of residuals r, elementwise."""
    small = np.abs(r) <= delta
    return (np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)),
            np.where(small, r, delta * np.sign(r)))


def _objective(x: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float):
    """(sum of Huber losses of log L_pred - log L, gradient) at x = (a, b, e, alpha, beta); log L_pred is
    the log-sum-exp of a - alpha log N, b - beta log D and e (numerically stable, as Hoffmann et al.)."""
    a, b, e, alpha, beta = x
    terms = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
    m = terms.max(axis=0)
    w = np.exp(terms - m)
    pred = m + np.log(w.sum(axis=0))
    w /= w.sum(axis=0)  # d pred / d term
    h, dh = _huber_terms(pred - logL, delta)
    grad = np.array([np.sum(dh * w[0]), np.sum(dh * w[1]), np.sum(dh * w[2]),
                     np.sum(dh * w[0] * -logN), np.sum(dh * w[1] * -logD)])
    return h.sum(), grad


def _grid_objective(logN, logD, logL, delta: float) -> np.ndarray:
    """The objective at every row of START_GRID (vectorised), shape (len(START_GRID),)."""
    a, b, e, alpha, beta = (START_GRID[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * logN, b - beta * logD, np.broadcast_to(e, (len(a), len(logN)))])
    pred = np.logaddexp.reduce(terms, axis=0)
    return _huber_terms(pred - logL, delta)[0].sum(axis=1)


def fit_law(N, D, L, delta: float = HUBER_DELTA, starts: int = 20) -> LawFit:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta (Approach 3, Hoffmann et al. 2022).

    N, D, L: 1-D arrays of equal length (parameters, tokens, final loss in nats/token; > 0), at least 5.
    The objective (Huber, ``delta``, on log L) is evaluated at every point of Hoffmann et al.'s grid
    of starts; L-BFGS (scipy) runs from the ``starts`` best of them, to tight tolerances (Besiroglu et
    al. found the original fit stopped early); the lowest optimum wins.

    Raises:
        ValueError: mismatched lengths, fewer than 5 points, or a non-positive value.
    """
    from scipy.optimize import minimize

    N, D, L = (np.asarray(v, float).ravel() for v in (N, D, L))
    if not len(N) == len(D) == len(L) or len(N) < 5:
        raise ValueError(f"fit_law needs N, D, L of equal length >= 5, got {len(N)}, {len(D)}, {len(L)}")
    if min(N.min(), D.min(), L.min()) <= 0:
        raise ValueError("fit_law needs positive N, D and L")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    order = np.argsort(_grid_objective(logN, logD, logL, delta))[:starts]
    best = None
    for x0 in START_GRID[order]:
        res = minimize(_objective, x0, args=(logN, logD, logL, delta), jac=True, method="L-BFGS-B",
                       options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12})
        if best is None or res.fun < best.fun:
            best = res
    a, b, e, alpha, beta = best.x
    return LawFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                  beta=float(beta), objective=float(best.fun))


def bootstrap_law(N, D, L, n_boot: int = 200, seed: int = 0, level: float = 0.95,
                  ratio_at: float | None = None, starts: int = 5) -> tuple[list[LawFit], dict]:
    """Refit on ``n_boot`` resamples of the points drawn with replacement (Besiroglu et al. 2024);
    return (the fits, {name: (lo, hi)}) with the central ``level`` interval of E, A, B, alpha, beta and,
    when ``ratio_at`` (FLOPs) is given, of the compute-optimal tokens per parameter there ("ratio")."""
    N, D, L = (np.asarray(v, float).ravel() for v in (N, D, L))
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(N), len(N))
        if len(np.unique(idx)) < 5:  # five parameters need five distinct points
            continue
        fits.append(fit_law(N[idx], D[idx], L[idx], starts=starts))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    values = {k: [getattr(f, k) for f in fits] for k in ("E", "A", "B", "alpha", "beta")}
    if ratio_at is not None:
        values["ratio"] = [f.optimal_ratio(ratio_at) for f in fits]
    return fits, {k: tuple(float(x) for x in np.percentile(v, q)) for k, v in values.items()}


def fit_parabola(N, L) -> float | None:
    """Approach 2 for one compute budget: fit L = c2 x^2 + c1 x + c0 with x = log N by least squares;
    return the N at its vertex, or None when the parabola opens downwards (no minimum). Needs >= 3
    points (ValueError otherwise)."""
    x, L = np.log(np.asarray(N, float)), np.asarray(L, float)
    if len(x) < 3:
        raise ValueError("a parabola needs at least 3 points")
    c2, c1, _ = np.polyfit(x, L, 2)
    return float(np.exp(-c1 / (2 * c2))) if c2 > 0 else None
