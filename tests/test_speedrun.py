"""`gptforge speedrun`: the whole pipeline on a small corpus, and the recipes it runs."""

import json
import re
from pathlib import Path

import pytest

from gptforge.cli import main
from gptforge.models import build_model
from gptforge.speedrun import RECIPES, SHORT_BUDGET


def test_speedrun_end_to_end(tmp_path, tinyshakespeare, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_bytes(tinyshakespeare.read_bytes()[:200_000])
    out = tmp_path / "run"
    # a fixed step budget keeps the test independent of machine load (calibration is tested below)
    assert main(["speedrun", "--preset", "nanogpt-cpu", "--corpus", str(corpus), "--out", str(out),
                 "--samples", "2", "--train", "max_steps=60", "--train", "eval_interval=20"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.splitlines()[-1] == f"report: {out / 'report.md'}"
    report = (out / "report.md").read_text()
    for section in ("## Loss", "## Samples", "### Sample 2", "## Config", "final val bpb", "MFU"):
        assert section in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "max_steps" and summary["step"] == 60
    metrics = [json.loads(line) for line in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_bpb"] for r in metrics if "val_bpb" in r]
    assert len(evals) == 4 and evals[-1] < evals[0] - 1.0  # it learned something
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "samples.txt").read_text().count("--- sample") == 2
    # a second speedrun into the same folder refuses instead of mixing runs
    assert main(["speedrun", "--corpus", str(corpus), "--time", "3", "--out", str(out)]) == 2
    assert "already holds a speedrun" in capsys.readouterr().err


def test_time_budget_sets_the_step_count(tmp_path, tinyshakespeare, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_bytes(tinyshakespeare.read_bytes()[:100_000])
    out = tmp_path / "run"
    assert main(["speedrun", "--corpus", str(corpus), "--time", "2", "--out", str(out),
                 "--samples", "1"]) == 0
    err = capsys.readouterr().err
    per_step_ms, steps = re.search(r"([\d.]+) ms/step -> (\d+) steps", err).groups()
    # steps = floor(budget / measured step time); the run then takes exactly that many steps
    assert int(steps) == pytest.approx(2000 / float(per_step_ms), rel=0.02, abs=1)
    assert json.loads((out / "summary.json").read_text())["step"] == int(steps)


def test_nanogpt_cpu_recipe_is_nanogpts_model():
    r = RECIPES["nanogpt-cpu"]
    cfg = r.config(None)
    m = build_model("gpt", vocab_size=65, block_size=cfg["block_size"], preset=cfg["preset"],
                    depth=cfg["depth"], **cfg["model"])
    # nanoGPT prints "number of parameters: 0.80M" (it leaves out the position embeddings)
    assert m.num_params() - 64 * 128 == 795_904
    c = m.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size) == (4, 4, 128, 64)
    assert (c.bias, c.tie_embeddings) == (False, True)
    assert (c.positional, c.norm, c.mlp, c.dropout) == ("learned", "layernorm", "gelu", 0.0)
    assert (cfg["batch_size"], cfg["max_steps"], cfg["lr"], cfg["min_lr_frac"], cfg["warmup_steps"],
            cfg["beta2"]) == (12, 2000, 1e-3, 0.1, 100, 0.99)


def test_cpu_recipe_scales_with_the_budget():
    r = RECIPES["cpu"]
    short, long = r.config(SHORT_BUDGET), r.config(600)
    assert short["depth"] < long["depth"] and short["model"]["n_embd"] < long["model"]["n_embd"]
    assert long == r.train and r.config(None) == r.config(r.time)


@pytest.mark.parametrize("args,msg", [(["--preset", "gpu-small"], "needs a CUDA GPU"),
                                      (["--time", "0"], "--time 0: expected a finite number > 0"),
                                      (["--time", "nan"], "--time nan: expected a finite number > 0"),
                                      (["--samples", "-1"], "--samples -1: expected an integer >= 0"),
                                      (["--train", "nonsense=1"], "--train: unknown key 'nonsense'"),
                                      (["--train", "lr=inf"], "--train: lr='inf': expected a finite number"),
                                      (["--model", "bias=maybe"], "bias='maybe': expected a boolean"),
                                      (["--corpus", "/nonexistent/x.txt"], "no such file")])
def test_speedrun_errors(tmp_path, args, msg, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "c.txt").write_text("to be or not to be\n" * 500)
    base = ["speedrun", "--corpus", str(tmp_path / "c.txt"), "--out", str(tmp_path / "o"), "--time", "1"]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "tokenizer.json").exists()  # refused before any stage ran


def test_ctrl_c_stops_the_speedrun_after_saving(tmp_path, tinyshakespeare):
    import os
    import signal
    import subprocess
    import sys
    import time

    corpus = tmp_path / "small.txt"
    corpus.write_bytes(tinyshakespeare.read_bytes()[:100_000])
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "gptforge", "speedrun", "--preset", "nanogpt-cpu",
                             "--corpus", str(corpus), "--out", str(out), "--train", "eval_interval=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "pretrain" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) > 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: pretraining saved at step" in err and "--resume" in err
    assert (out / "pretrain" / "ckpt" / "latest").exists() and not (out / "report.md").exists()
