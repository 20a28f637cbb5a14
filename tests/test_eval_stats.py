"""Wilson intervals and the exact McNemar test against statsmodels on fixtures."""

import math

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from gptforge.eval.stats import (
    add_interval,
    compare_sentence,
    format_p,
    items_fingerprint,
    mcnemar_exact,
    paired_test,
    wilson_interval,
)


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 50), (50, 50), (39, 50), (1, 200), (117, 200),
                                  (3, 7), (999, 1000), (5000, 10000)])
@pytest.mark.parametrize("confidence", [0.95, 0.99, 0.8])
def test_wilson_matches_statsmodels(k, n, confidence):
    lo, hi = wilson_interval(k, n, confidence)
    ref = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    assert lo == pytest.approx(ref[0], abs=1e-12) and hi == pytest.approx(ref[1], abs=1e-12)
    assert 0 <= lo <= k / n <= hi <= 1


def test_wilson_edges():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    lo, hi = wilson_interval(25, 50)
    assert 0.12 < (hi - lo) / 2 < 0.15  # the "about +-13 points on 50 items"
    for k, n in ((-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, confidence=1.0)


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (0, 1), (1, 0), (3, 3), (10, 2), (2, 10), (0, 25),
                                            (40, 31), (150, 90), (1, 999)])
def test_mcnemar_matches_statsmodels(only_a, only_b):
    both = 17  # concordant cells do not enter the exact test
    table = np.array([[both, only_a], [only_b, 5]])
    ref = mcnemar(table, exact=True).pvalue
    assert mcnemar_exact(only_a, only_b) == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_paired_test_counts_discordant_items():
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.5
    b = a.copy()
    b[rng.choice(300, 60, replace=False)] = True  # B fixes some of A's misses
    t = paired_test(a.tolist(), b.tolist())
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    assert (t["only_a"], t["only_b"], t["n"]) == (only_a, only_b, 300)
    assert t["points"] == pytest.approx(100 * (b.mean() - a.mean()))
    table = np.array([[(a & b).sum(), only_a], [only_b, (~a & ~b).sum()]])
    assert t["p"] == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9)
    with pytest.raises(ValueError):
        paired_test([1, 0], [1])


def test_sentences_and_intervals_in_results():
    items = items_fingerprint(["q1", "q2"])
    base = {"n": 100, "accuracy": 0.05, "correct": [1] * 5 + [0] * 95, "items": items}
    sft = {"n": 100, "accuracy": 0.95, "correct": [1] * 95 + [0] * 5, "items": items}
    s = compare_sentence("base", "sft", "arithmetic", base, sft)
    assert s.startswith("sft vs base on arithmetic: +90 points, p < 0.001 (significant at 5%")
    assert compare_sentence("base", "sft", "arithmetic", base, {**sft, "items": "other"}) is None
    assert compare_sentence("base", "sft", "arithmetic", {"n": 100, "accuracy": 0.5}, sft) is None
    assert add_interval(dict(base))["ci95"] == list(wilson_interval(5, 100))
    assert "ci95" not in add_interval({"n": 3, "accuracy": None})
    assert format_p(0.0004) == "p < 0.001" and format_p(0.0312) == "p = 0.031"
