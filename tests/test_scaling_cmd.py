"""`gptforge scaling`: the budget arithmetic, and the command end to end on a tiny grid."""

import json
import math

import pytest

from gptforge.cli import main
from gptforge.lab.scaling import BATCHES, BLOCK, GRIDS, Grid, ScalingConfig, model_size, plan_run, scaling

CHAR_VOCAB = 65  # tiny shakespeare's characters; only the lm_head's share of N depends on it


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_every_planned_run_spends_its_budget(name):
    grid = GRIDS[name]
    budgets = [*grid.budgets, grid.heldout_factor * max(grid.budgets)]
    for depth in range(1, max(grid.depths) + 2):  # the held-out run may take the next depth
        n = model_size(depth, CHAR_VOCAB)["params"]
        for c in budgets:
            batch, steps = plan_run(c, n)
            flops = 6 * n * batch * BLOCK * steps
            assert BATCHES[0] <= batch <= BATCHES[1] and batch & (batch - 1) == 0
            assert abs(flops / c - 1) <= 0.5 / steps + 1e-12  # whole steps: at most half a step off
            if depth in grid.depths or c == budgets[-1]:
                assert steps >= 40 and abs(flops / c - 1) <= 0.0125, (name, depth, c, batch, steps)


def test_plan_run_batches_follow_the_tokens():
    n = model_size(2, CHAR_VOCAB)["params"]
    small, big = plan_run(1e9, n), plan_run(1e13, n)
    assert small[0] == BATCHES[0] and big[0] == BATCHES[1]  # clamped at both ends
    assert big[1] > small[1]
    assert model_size(3, CHAR_VOCAB)["params"] > n > model_size(1, CHAR_VOCAB)["params"]
    size = model_size(2, CHAR_VOCAB)
    assert size["params_all"] - size["params"] == CHAR_VOCAB * size["n_embd"]  # the input embedding only


def test_scaling_end_to_end_on_a_tiny_grid(tmp_path, capsys):
    out = tmp_path / "scaling"
    grid = Grid(depths=(1, 2), budgets=(2e9, 4e9, 8e9), heldout_factor=2.0, boot=6)
    rec = scaling(ScalingConfig(out=str(out), seed=3), grid, progress=False)
    assert {p.name for p in out.iterdir()} >= {"scaling.md", "scaling.png", "scaling.json", "data"}
    assert json.loads((out / "scaling.json").read_text())["heldout"]["depth"] == rec["heldout"]["depth"]
    assert len(rec["runs"]) == 6 and {(r["depth"], r["budget"]) for r in rec["runs"]} == {
        (d, c) for d in grid.depths for c in grid.budgets}
    for r in rec["runs"]:
        assert math.isfinite(r["val_loss"]) and 0 < r["val_loss"] < math.log(CHAR_VOCAB) + 0.5
        assert abs(r["flops"] / r["budget"] - 1) <= 0.5 / r["steps"] + 1e-12
        assert r["flops"] == 6 * r["params"] * r["tokens"] < r["flops_attn"]
    assert all(math.isfinite(v) for v in rec["fit"]["law"].values())
    assert set(rec["fit"]["intervals"]) == {"E", "A", "B", "alpha", "beta", "ratio"}
    h = rec["heldout"]
    assert h["budget"] == 1.6e10 and h["depth"] in (1, 2, 3) and h["run"]["depth"] == h["depth"]
    assert math.isfinite(h["pred_loss"]) and math.isfinite(h["run"]["val_loss"])
    assert h["abs_err_loss"] == pytest.approx(abs(h["pred_loss"] - h["run"]["val_loss"]))
    assert abs(h["run"]["flops"] / h["budget"] - 1) < 0.02
    md = (out / "scaling.md").read_text()
    assert "## Held-out prediction" in md and "except the input embedding" in md
    assert sum(line.startswith("| 2e+09") or line.startswith("| 8e+09") for line in md.splitlines()) >= 4
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = capsys.readouterr().err
    # progress names each run, and the prediction is printed before the held-out run is trained
    assert "[1/7] depth 1" in err and err.index("[predict]") < err.index("[7/7] held-out: depth")


def test_scaling_refuses_a_used_folder(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert main(["scaling", "--out", str(tmp_path / "taken"), "--quick"]) == 2
    assert main(["scaling", "--out", str(tmp_path / "new"), "--corpus", str(tmp_path / "missing.txt")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
