"""The scaling-law fitters (gptforge.lab.scaling) against losses made from a known law."""

import numpy as np
import pytest

from gptforge.lab.scaling import LawFit, bootstrap_law, fit_law, fit_parabola

TRUE = LawFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022's fit


def _isoflop(noise: float, seed: int = 0):
    """An isoFLOP grid (5 budgets x 6 sizes, C = 6 N D) of losses from TRUE, times lognormal noise."""
    rng = np.random.default_rng(seed)
    C = np.repeat(np.logspace(18, 22, 5), 6)
    N = np.concatenate([np.logspace(-1, 1, 6) * np.sqrt(c / 120) for c in np.logspace(18, 22, 5)])
    D = C / (6 * N)
    return N, D, TRUE.loss(N, D) * np.exp(rng.normal(0, noise, len(N)))


def test_fit_recovers_the_law():
    # tolerance: 0.2% noise on the loss; exponents within 0.05, E within 5%
    N, D, L = _isoflop(0.002)
    fit = fit_law(N, D, L)
    assert abs(fit.alpha - TRUE.alpha) < 0.05 and abs(fit.beta - TRUE.beta) < 0.05
    assert abs(fit.E - TRUE.E) / TRUE.E < 0.05
    assert np.allclose(fit.loss(N, D), TRUE.loss(N, D), rtol=0.005)


@pytest.mark.xfail(strict=True, reason="measured 2026-12-04: the percentile bootstrap's intervals from 30 "
                   "points were too narrow (seed 0, 0.3% noise: E (1.692, 1.725) missed 1.69; 0.2%: beta's "
                   "lower end 0.2802 missed 0.28); not yet diagnosed")
def test_bootstrap_intervals_cover_the_truth():
    N, D, L = _isoflop(0.002)
    _, ci = bootstrap_law(N, D, L, n_boot=60, ratio_at=1e22, starts=2)
    for k in ("E", "alpha", "beta"):
        assert ci[k][0] <= getattr(TRUE, k) <= ci[k][1], (k, ci[k])
    assert ci["ratio"][0] <= TRUE.optimal_ratio(1e22) <= ci["ratio"][1]


def test_fit_is_exact_without_noise():
    N, D, L = _isoflop(0.0)
    fit = fit_law(N, D, L)
    assert abs(fit.alpha - TRUE.alpha) < 1e-3 and abs(fit.beta - TRUE.beta) < 1e-3
    assert abs(fit.E - TRUE.E) < 1e-3


def test_parabola_minimum():
    N = np.logspace(5, 8, 7)
    L = 2.0 + 0.3 * (np.log(N) - np.log(3e6)) ** 2
    assert abs(fit_parabola(N, L) / 3e6 - 1) < 1e-6
    assert fit_parabola(N, -L) is None
