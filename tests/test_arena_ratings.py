"""Arena ratings: Bradley-Terry against scikit-learn's logistic regression as the LMSYS notebook fits
it (an independent computation), anchoring, bootstrap intervals, online Elo by hand, bad input."""

import json
import math

import numpy as np
import pytest

from gptforge.arena.ratings import bt_ratings, leaderboard, online_elo, read_battles
from gptforge.errors import UserError

STRENGTH = {"alpha": 1150.0, "beta": 1050.0, "gamma": 1000.0, "delta": 900.0, "eps": 820.0}


def synthetic(n: int = 400, seed: int = 0) -> list[dict]:
    """Battles between random pairs from known ratings; a close call is a tie (some "both bad")."""
    rng = np.random.default_rng(seed)
    names = list(STRENGTH)
    out = []
    for t in range(n):
        a, b = rng.choice(len(names), size=2, replace=False)
        ma, mb = names[a], names[b]
        p = 1 / (1 + 10 ** ((STRENGTH[mb] - STRENGTH[ma]) / 400))
        u = rng.random()
        winner = ("tie" if rng.random() < 0.15 else "tie (bothbad)" if rng.random() < 0.05
                  else "model_a" if u < p else "model_b")
        out.append({"model_a": ma, "model_b": mb, "winner": winner, "tstamp": float(t)})
    return out


def sklearn_lmsys(battles: list[dict]) -> dict[str, float]:
    """The LMSYS notebook's compute_mle_elo: every battle twice, a tie = one A win + one B win,
    features +log(10) / -log(10), unpenalised logistic regression without intercept."""
    from sklearn.linear_model import LogisticRegression

    models = sorted({b["model_a"] for b in battles} | {b["model_b"] for b in battles})
    idx = {m: i for i, m in enumerate(models)}
    rows = battles + battles
    X = np.zeros((len(rows), len(models)))
    Y = np.zeros(len(rows))
    for i, b in enumerate(rows):
        X[i, idx[b["model_a"]]] = math.log(10)
        X[i, idx[b["model_b"]]] = -math.log(10)
        first_copy = i < len(battles)
        Y[i] = 1.0 if b["winner"] == "model_a" or (b["winner"].startswith("tie") and first_copy) else 0.0
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10, max_iter=10_000)  # no penalty
    lr.fit(X, Y)
    return dict(zip(models, (400 * lr.coef_[0] + 1000).tolist(), strict=True))


def test_bradley_terry_matches_sklearn_lmsys_fit():
    battles = synthetic()
    ours, ref = bt_ratings(battles), sklearn_lmsys(battles)
    assert ours.keys() == ref.keys()
    ref_mean = np.mean(list(ref.values()))  # sklearn's coefficients sum to ~0 (lbfgs from 0): mean 1000
    for m in ours:
        assert abs(ours[m] - (ref[m] - ref_mean + 1000)) < 1.0, (m, ours[m], ref[m])
    assert abs(np.mean(list(ours.values())) - 1000) < 1e-6
    # anchored: a named model is exactly 1000, the differences unchanged
    anchored = bt_ratings(battles, anchor="gamma")
    assert anchored["gamma"] == pytest.approx(1000, abs=1e-9)
    for m in ours:
        assert abs((anchored[m] - anchored["gamma"]) - (ref[m] - ref["gamma"])) < 1.0
    # and the fit recovers the generating ratings roughly (400 battles: within ~60 points)
    for m, s in STRENGTH.items():
        assert abs((ours[m] - ours["gamma"]) - (s - 1000)) < 80


def test_bradley_terry_matches_choix():
    choix = pytest.importorskip("choix")
    battles = [b for b in synthetic(300, seed=3) if not b["winner"].startswith("tie")]
    models = sorted(STRENGTH)
    idx = {m: i for i, m in enumerate(models)}
    data = [(idx[b["model_a"]], idx[b["model_b"]]) if b["winner"] == "model_a"
            else (idx[b["model_b"]], idx[b["model_a"]]) for b in battles]
    params = choix.opt_pairwise(len(models), data, alpha=0.0, method="Newton-CG", tol=1e-10)
    ref = 400 / math.log(10) * (params - params.mean()) + 1000
    ours = bt_ratings(battles)
    for m, r in zip(models, ref, strict=True):
        assert abs(ours[m] - r) < 1.0


def test_leaderboard_intervals_ranks_and_elo():
    battles = synthetic()
    rows = leaderboard(battles, rounds=200, seed=1)
    assert rows[0].model == "alpha" and rows[-1].model == "eps"
    for r in rows:
        assert r.lower <= r.rating <= r.upper
        assert r.battles == r.wins + r.ties + r.losses
    assert sum(r.battles for r in rows) == 2 * len(battles)
    assert rows[0].rank == 1 and rows[-1].rank > 1  # alpha and eps are ~330 points apart
    again = leaderboard(battles, rounds=200, seed=1)
    assert [(r.lower, r.upper) for r in again] == [(r.lower, r.upper) for r in rows]  # seeded
    # online Elo by hand: K = 4, from 1000, two battles
    two = [{"model_a": "x", "model_b": "y", "winner": "model_a"},
           {"model_a": "y", "model_b": "x", "winner": "tie"}]
    elo = online_elo(two)
    x1, y1 = 1000 + 4 * 0.5, 1000 - 4 * 0.5
    ey = 1 / (1 + 10 ** ((x1 - y1) / 400))
    assert elo["y"] == pytest.approx(y1 + 4 * (0.5 - ey)) and elo["x"] == pytest.approx(x1 - 4 * (0.5 - ey))


def test_separated_model_stays_finite():
    battles = [{"model_a": "a", "model_b": "b", "winner": "model_a"}] * 5 + \
              [{"model_a": "b", "model_b": "c", "winner": "tie"}] * 5
    r = bt_ratings(battles)
    assert all(math.isfinite(v) for v in r.values()) and r["a"] > r["b"] + 500


def test_bad_battle_files_name_file_and_row(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text('[{"model_a": "x", "model_b": "y", "winner": "model_a"},')
    with pytest.raises(UserError, match=r"b.json: malformed JSON at line 1"):
        read_battles(bad)
    bad.write_text(json.dumps([{"model_a": "x", "model_b": "y", "winner": "model_a"},
                               {"model_a": "x", "model_b": "y", "winner": "draw"}]))
    with pytest.raises(UserError, match=r"b.json: row 1: unknown winner 'draw'"):
        read_battles(bad)
    lines = tmp_path / "b.jsonl"
    lines.write_text('{"model_a": "x", "model_b": "y", "winner": "tie"}\n{"model_a": "x"}\n')
    with pytest.raises(UserError, match=r"b.jsonl: line 2: no 'model_b' field"):
        read_battles(lines)
