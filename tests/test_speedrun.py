"""`gptforge speedrun`: the whole pipeline on a small corpus, and the recipes it runs."""

import json
import re
import time
from pathlib import Path

import pytest
from helpers import CHAT_TEXT, SHARED

from gptforge.cli import main
from gptforge.models import build_model
from gptforge.speedrun import RECIPES, SHORT_BUDGET, SpeedrunConfig, fit_budget, plan


def test_speedrun_end_to_end(tmp_path, tinyshakespeare, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_bytes(tinyshakespeare.read_bytes()[:200_000])
    out = tmp_path / "run"
    # a fixed step budget keeps the test independent of machine load (calibration is tested below)
    assert main(["speedrun", "--preset", "nanogpt-cpu", "--corpus", str(corpus), "--out", str(out),
                 "--samples", "2", "--train", "max_steps=60", "--train", "eval_interval=20"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == f"report: {out / 'report.md'}"
    # a char-level tokenizer has no chat tokens: the SFT stage says so and the rest goes on
    assert "skipped: the char tokenizer has no chat special tokens" in captured.err
    assert "gptforge sample --ckpt" in captured.err and not (out / "sft").exists()
    report = (out / "report.md").read_text()
    for section in ("## Base vs SFT", "## Pretraining loss", "## Samples", "### Sample 2",
                    "## Pretraining config", "bits per byte (eval)", "MFU", "wall clock"):
        assert section in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "max_steps" and summary["step"] == 60
    metrics = [json.loads(line) for line in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_bpb"] for r in metrics if "val_bpb" in r]
    assert len(evals) == 4 and evals[-1] < evals[0] - 1.0  # it learned something
    # the eval stage scores the whole val split: the same figure as the run's last (whole-split) eval
    ev = json.loads((out / "pretrain" / "eval.json").read_text())
    assert ev["bpb"]["bpb"] == pytest.approx(evals[-1], rel=1e-3)  # windows of the tail differ slightly
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "samples.txt").read_text().count("--- sample") == 2
    # a second speedrun into the same folder refuses instead of mixing runs
    assert main(["speedrun", "--corpus", str(corpus), "--time", "3", "--out", str(out)]) == 2
    assert "already holds a speedrun" in capsys.readouterr().err
    # ... but a stage can run again alone on what the folder holds
    (out / "report.md").unlink()
    assert main(["speedrun", "--preset", "nanogpt-cpu", "--out", str(out), "--only", "report"]) == 0
    assert "## Base vs SFT" in (out / "report.md").read_text()


def test_speedrun_to_an_assistant(tmp_path, capsys):
    """The cpu recipe's whole path on a small corpus: SFT runs, both models are evaluated on the same
    tasks, and the report has base and SFT columns and a transcript with a calculator call forced in."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(CHAT_TEXT * 20)
    out = tmp_path / "run"
    assert main(["speedrun", "--corpus", str(corpus), "--out", str(out), "--samples", "1",
                 "--eval-limit", "3", "--train", "max_steps=4", "--train", "eval_interval=2",
                 "--model", "n_embd=48", "--train", "depth=1", "--sft-data", "arithmetic:40,identity",
                 "--sft-steps", "3", "--skip", "rl"]) == 0
    err = capsys.readouterr().err
    assert "gptforge chat --ckpt" in err and "gptforge serve --ckpt" in err
    report = (out / "report.md").read_text()
    assert "| | pretrain | sft |" in report and "chat:arithmetic" in report
    if (SHARED / "evals").is_dir():  # CORE needs the task files; the tool tasks run without them
        assert "core:piqa" in report
    assert "## A chat with the SFT model" in report and "you> What is 123 + 456?" in report
    assert "you> How many r's are in strawberry?" in report and "you> Hello! Who are you?" in report
    assert report.count("assistant> ") == 4 and "you> Write a short poem about the sea." in report
    for name in ("pretrain", "sft"):
        ev = json.loads((out / name / "eval.json").read_text())
        assert ev["tasks"]["chat:arithmetic"]["n"] == 3 and ev["bpb"]["bpb"] > 0
    info = json.loads((out / "speedrun.json").read_text())
    assert list(info["stage_s"]) == ["data", "pretrain", "sft", "eval", "report"]


def test_speedrun_rl_stage(tmp_path, capsys):
    """data -> pretrain -> sft -> rl -> eval -> report on a tiny model: the RL run tunes the SFT model,
    is evaluated on the same items, gets a column and a paired comparison in the report, and is the
    model the chat transcript and the closing lines point to."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(CHAT_TEXT * 20)
    out = tmp_path / "run"
    assert main(["speedrun", "--corpus", str(corpus), "--out", str(out), "--samples", "1",
                 "--eval-limit", "2", "--train", "max_steps=2", "--train", "eval_interval=2",
                 "--model", "n_embd=48", "--train", "depth=1", "--sft-data", "arithmetic:40,spelling:20",
                 "--sft-steps", "2", "--rl-steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "[4/6] rl" in err
    assert "RL on arithmetic,letter_count,social (2 prompts x 8 samples per step, 2 steps)" in err
    assert f"gptforge chat --ckpt {out / 'rl'}" in err
    info = json.loads((out / "speedrun.json").read_text())
    assert list(info["stage_s"]) == ["data", "pretrain", "sft", "rl", "eval", "report"]
    assert info["rl"]["step"] == 2 and json.loads((out / "rl" / "config.json").read_text())["task"] == "rl"
    recs = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "val_pass1" in r] == [0, 2]
    assert all("train_reward" in r for r in recs if "train_loss" in r)
    report = (out / "report.md").read_text()
    assert "## Base vs SFT vs RL" in report and "| | pretrain | sft | rl |" in report
    assert "RL held-out pass@1 / pass@k (sampled)" in report and "rl vs sft on chat:arithmetic" in report
    assert "## A chat with the RL model" in report
    ev = json.loads((out / "rl" / "eval.json").read_text())
    assert ev["tasks"]["chat:letter_count"]["n"] == 2


def test_wall_clock_budget_plans_steps_and_evaluations(tmp_path, tinyshakespeare, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_bytes(tinyshakespeare.read_bytes()[:100_000])
    out = tmp_path / "run"
    t0 = time.time()
    assert main(["speedrun", "--corpus", str(corpus), "--time", "4", "--out", str(out),
                 "--samples", "1", "--skip", "sft,eval,report"]) == 0
    err = capsys.readouterr().err
    found = re.search(r"([\d.]+) ms/step -> (\d+) steps \(evaluating ([\d,]+) tokens", err)
    per_step_ms, steps, eval_tokens = found.groups()
    info = json.loads((out / "speedrun.json").read_text())
    # the steps' share of the budget becomes the wsd schedule's time, re-planned from step times
    # while the run goes; the wall-clock budget is a hard stop
    cfg = json.loads((out / "pretrain" / "config.json").read_text())
    assert cfg["max_time"] == 4 and cfg["eval_tokens"] == int(eval_tokens.replace(",", ""))
    assert cfg["max_steps"] == int(steps)
    assert cfg["schedule_time"] == pytest.approx(int(steps) * float(per_step_ms) / 1000, rel=0.01)
    pre = info["pretrain"]
    assert pre["stopped_by"] == "max_time" or pre["train_time_s"] < cfg["schedule_time"] * 1.25
    assert pre["time_s"] < 4 * 1.5 + 2 and time.time() - t0 < 120


def test_a_budget_holds_when_steps_slow_down_after_calibration(tmp_path, monkeypatch):
    """Steps that take 0.3 s while calibrating and 0.6 s after it (a machine that gets busier), a
    4 s budget: the probe counts, the short plan (< 10 steps) follows the measured step times to
    the end of its warmdown, and the stage ends within the budget."""
    import dataclasses

    import torch._dynamo  # noqa: F401 (the first optimizer imports it: seconds, once per process)
    from helpers import shakespeare_char_shards

    from gptforge.speedrun import _budgeted
    from gptforge.train import make_config, train
    from gptforge.train import session as train_session
    from gptforge.train.session import shard_data

    monkeypatch.setattr(train_session, "peak_flops", lambda *a: 1e12)  # no MFU probe in the timing
    shards = shakespeare_char_shards(tmp_path, 50_000)
    cfg = make_config({"arch": "gpt", "preset": "modern", "depth": 1, "model": {"n_embd": 32, "n_head": 2},
                       "batch_size": 4, "block_size": 32, "eval_tokens": 512, "eval_interval": 10**6,
                       "warmup_steps": 1, "schedule": "wsd", "warmdown_frac": 0.4, "threads": 1,
                       "progress": "none", "data": str(shards), "out": str(tmp_path / "run")})
    data = shard_data(cfg)
    delay, loss_fn = [0.3], data.loss_fn

    def slow(model, batch):
        time.sleep(delay[0])
        return loss_fn(model, batch)

    data = dataclasses.replace(data, loss_fn=slow)
    t0 = time.time()
    planned, _, started = _budgeted(cfg, 4.0, data)
    delay[0] = 0.6
    s = train(planned, data=data, started=started)
    wall = time.time() - t0
    assert planned.max_steps < 10 and planned.schedule_time > 0
    assert s["stopped_by"] == "max_steps" and s["step"] < planned.max_steps  # re-planned to fewer
    assert wall < 4.0 + 0.5, wall


def test_fit_budget_leaves_room_for_evaluation():
    # 0.1 s steps of 1,000 tokens; evaluations of 30,000 tokens cost 1 s each (a third of a step per token)
    steps, eval_tokens = fit_budget(100, 0.1, 1000, 30_000, 200)  # 7 evaluations: 7 s, under 10%
    assert eval_tokens == 30_000 and steps == int((95 - 2) / (0.1 + 1 / 200))
    # more evaluations, or a tiny budget, shrink each to keep them within 10% of the budget
    for seconds, interval, n_evals in ((100, 100, 12), (2, 100, 2)):
        steps, eval_tokens = fit_budget(seconds, 0.1, 1000, 30_000, interval)
        eval_s = eval_tokens * 0.1 / 1000 / 3
        assert n_evals * eval_s == pytest.approx(0.1 * seconds, rel=1e-3)
        assert steps == int((0.95 * seconds - 2 * eval_s) / (0.1 + eval_s / interval))
    assert fit_budget(0.01, 0.1, 1000, 30_000, 100) == (1, 1000)  # never under one step, one step's tokens


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
    short, mid, long = r.config(SHORT_BUDGET), r.config(SHORT_BUDGET + 1), r.config(600)
    assert short["depth"] < long["depth"] and short["model"]["n_embd"] < long["model"]["n_embd"]
    assert short["model"]["n_embd"] < mid["model"]["n_embd"] == long["model"]["n_embd"]
    assert mid["model"]["dropout"] == 0 < long["model"]["dropout"]  # dropout once the data repeats often
    assert short["weight_decay"] == mid["weight_decay"] == long["weight_decay"] > 0
    assert long == r.train and r.config(None) == r.config(r.time)


@pytest.mark.parametrize("budget", [30, 120, 600])
def test_a_model_width_alone_keeps_the_recipes_64_wide_heads(budget, tmp_path):
    """Each tier pins a head count (2, 3, 4) that another width rarely divides: n_embd alone sets it."""
    sr = SpeedrunConfig(time=budget, out=str(tmp_path / "run"))
    assert plan(sr, {"model": {"n_embd": 32}})[0].model["n_head"] == 1
    assert plan(sr, {"model": {"n_embd": 512}})[0].model["n_head"] == 8
    assert plan(sr, {"model": {"n_embd": 96, "n_head": 4}})[0].model["n_head"] == 4  # both given: as given


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


def test_only_data_prints_no_hints_for_stages_that_never_ran(tmp_path, capsys):
    """Issue 27.15: `--only data` printed "sample from it" and "report:" though nothing was trained."""
    from gptforge.data import shakespeare

    corpus = tmp_path / "c.txt"
    corpus.write_text(shakespeare.corpus_text()[:20_000])
    assert main(["speedrun", "--preset", "nanogpt-cpu", "--corpus", str(corpus), "--out", str(tmp_path / "r"),
                 "--only", "data"]) == 0
    captured = capsys.readouterr()
    assert "report:" not in captured.out and "sample from it" not in captured.err
    assert "talk to it" not in captured.err and not (tmp_path / "r" / "report.md").exists()


def test_a_stage_run_alone_names_the_missing_tokenizer(tmp_path, capsys):
    """`--only sft` on a folder with a pretrain run but no tokenizer.json said "the tokenizer has no chat
    special tokens" and skipped; it names the missing file instead."""
    (tmp_path / "r" / "pretrain").mkdir(parents=True)
    assert main(["speedrun", "--out", str(tmp_path / "r"), "--only", "sft"]) == 2
    err = capsys.readouterr().err
    assert "the sft stage needs" in err and "tokenizer.json; run the data stage first" in err
