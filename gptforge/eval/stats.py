"""How sure an accuracy is: Wilson score intervals, and exact McNemar tests for two models on the
same items.

    >>> wilson_interval(39, 50)                      # 78% right of 50
    (0.6476..., 0.8725...)
    >>> paired_test([1, 1, 0, 1], [0, 1, 0, 0])     # per-item correctness of two models
    {'n': 4, 'accuracy_a': 0.75, 'accuracy_b': 0.25, 'points': -50.0, 'only_a': 2, 'only_b': 0, 'p': 0.5}

On 50 items a 95% interval is about +-13 points, so a difference of a few points between two runs
says nothing by itself; the paired test uses only the items where the two models disagree, which
is what makes it sharper than comparing two intervals.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from statistics import NormalDist


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a proportion: ``k`` successes in ``n`` trials.

    Unlike the normal ("Wald") interval p +- z sqrt(p(1-p)/n), it stays inside [0, 1] and does not
    collapse to a point at 0% or 100%, so it is usable for the small n and extreme accuracies of
    quick evaluations.

    Args:
        k: successes, 0 <= k <= n. n: trials. confidence: coverage, in (0, 1).
    Returns:
        (low, high) as fractions; (nan, nan) when n == 0.
    Raises:
        ValueError: k outside [0, n], n < 0 or confidence outside (0, 1).

    Source: E. B. Wilson, "Probable inference, the law of succession, and statistical inference",
    JASA 22 (1927) 209-212; the same as statsmodels' ``proportion_confint(method="wilson")``.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided p-value of the exact McNemar test: are two models equally good on the same items?

    Only the discordant items count: ``only_a`` items that model A got right and B wrong, ``only_b``
    the reverse. Under the null hypothesis each discordant item goes either way with probability
    1/2, so the p-value is twice the binomial(only_a + only_b, 1/2) tail below min(only_a, only_b),
    capped at 1 (1.0 when there is no discordant item).

    Raises:
        ValueError: a negative count.

    Source: Q. McNemar, "Note on the sampling error of the difference between correlated
    proportions or percentages", Psychometrika 12 (1947) 153-157; the exact (binomial) form, as
    statsmodels' ``mcnemar(table, exact=True)``.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be >= 0, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers until the one division


def paired_test(correct_a: Sequence, correct_b: Sequence) -> dict:
    """Two models' per-item correctness (same items, same order; bools or 0/1) compared.

    Returns ``{"n", "accuracy_a", "accuracy_b", "points" (B minus A, percentage points),
    "only_a", "only_b" (discordant items), "p" (exact McNemar, two-sided)}``.

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(correct_a) != len(correct_b) or not correct_a:
        raise ValueError(f"need per-item results of the same non-empty items, got {len(correct_a)} "
                         f"and {len(correct_b)}")
    n = len(correct_a)
    only_a = sum(bool(a) and not b for a, b in zip(correct_a, correct_b, strict=True))
    only_b = sum(bool(b) and not a for a, b in zip(correct_a, correct_b, strict=True))
    acc_a, acc_b = sum(map(bool, correct_a)) / n, sum(map(bool, correct_b)) / n
    return {"n": n, "accuracy_a": acc_a, "accuracy_b": acc_b, "points": round(100 * (acc_b - acc_a), 6),
            "only_a": only_a, "only_b": only_b, "p": mcnemar_exact(only_a, only_b)}


def format_p(p: float) -> str:
    """``"p < 0.001"`` or ``"p = 0.03"`` (two significant figures)."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def format_interval(low: float, high: float) -> str:
    """``"[71.7, 83.2]"``: an interval of fractions in percent."""
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def items_fingerprint(keys) -> str:
    """A short digest of the items a task was scored on (their questions or ids, in order): two
    results are paired only when their fingerprints match."""
    return hashlib.blake2b(json.dumps(list(keys)).encode(), digest_size=8).hexdigest()


def add_interval(result: dict, confidence: float = 0.95) -> dict:
    """Put ``"ci95": [low, high]`` (Wilson) into a task result with ``n`` and ``accuracy`` (a
    fraction of n items, so right = round(accuracy * n)); results without an accuracy are left
    alone. Returns ``result``."""
    if result.get("accuracy") is not None and result.get("n"):
        k = round(result["accuracy"] * result["n"])
        result["ci95"] = list(wilson_interval(k, result["n"], confidence))
    return result


def compare_sentence(name_a: str, name_b: str, task: str, res_a: dict, res_b: dict) -> str | None:
    """``"sft vs base on arithmetic: +90 points, p < 0.001 (significant at 5%)"``: model B against
    model A on one task, from two task results holding per-item ``correct`` lists for the same
    items (the same ``items`` fingerprint). None when they cannot be paired."""
    ca, cb = res_a.get("correct"), res_b.get("correct")
    if not ca or not cb or len(ca) != len(cb) or res_a.get("items") != res_b.get("items"):
        return None
    t = paired_test(ca, cb)
    verdict = "significant at 5%" if t["p"] < 0.05 else "not significant"
    return (f"{name_b} vs {name_a} on {task}: {t['points']:+.0f} points, {format_p(t['p'])} ({verdict}; "
            f"right only for {name_b}: {t['only_b']}, only for {name_a}: {t['only_a']}, of {t['n']} items)")
