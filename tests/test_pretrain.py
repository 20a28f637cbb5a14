"""Pretraining runs end to end: every model of the zoo, bit-exact resume (in process and after a
real SIGINT), DDP with 2 processes == 1 process with gradient accumulation, budgets, best/latest
checkpoints, errors, the CLI and plots. Tiny models, a few steps, 1 thread per process."""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import mfu_cache, shakespeare_char_shards  # noqa: F401 (mfu_cache: a fixture)

from gptforge.checkpoint import load_checkpoint
from gptforge.cli import main
from gptforge.errors import UserError
from gptforge.train import make_config, resume_config, train

ROOT = Path(__file__).resolve().parents[1]
TINY_GPT = {"arch": "gpt", "preset": "modern", "depth": 1, "model": {"n_embd": 32, "n_head": 2}}
BASE = {"batch_size": 4, "block_size": 32, "eval_tokens": 512, "eval_interval": 4, "warmup_steps": 2,
        "threads": 1, "progress": "none", "lr": 1e-2}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return shakespeare_char_shards(tmp_path_factory.mktemp("shards"), 200_000)


pytestmark = pytest.mark.usefixtures("mfu_cache")  # the MFU probe measured once for this module


def cfg_for(data, out, **kw):
    base = {**BASE, **TINY_GPT, "data": str(data), "out": str(out), **kw}
    if base["arch"] != "gpt" or "model" in kw:
        base["model"] = {**(TINY_GPT["model"] if base["arch"] == "gpt" else {}), **kw.get("model", {})}
    return make_config(base)


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def train_losses(run) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in metrics(run) if "train_loss" in r}


@pytest.mark.parametrize("arch, extra", [
    ("bigram", {"lr": 0.3}),
    ("mlp", {"model": {"n_embd": 16, "n_hidden": 32}, "lr": 0.03}),
    ("lstm", {"model": {"n_embd": 16, "n_hidden": 32}, "lr": 0.03}),
    ("gpt", {"preset": "gpt2", "model": {"n_embd": 32, "n_head": 2}}),
    ("gpt", {"preset": "modern", "optimizer": "muon"}),
])
def test_every_model_of_the_zoo_trains(data, tmp_path, arch, extra):
    cfg = cfg_for(data, tmp_path / "run", arch=arch, max_steps=12, **extra)
    s = train(cfg)
    recs = metrics(tmp_path / "run")
    V = json.loads((data / "meta.json").read_text())["tokenizer"]["vocab_size"]
    assert recs[0]["step"] == 0 and recs[0]["val_loss"] == pytest.approx(math.log(V), abs=0.05)  # untrained
    assert s["step"] == 12 and s["tokens"] == 12 * 4 * 32 and s["stopped_by"] == "max_steps"
    assert s["val_loss"] < recs[0]["val_loss"] - 0.1  # it learned something
    r = recs[-2]
    assert set(r) >= {"step", "tokens", "train_loss", "lr", "tokens_per_s", "mfu", "time_s"}
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
    model, st = load_checkpoint(tmp_path / "run")
    assert st.step == 12 and type(model).__name__.lower() == arch
    assert (Path(st.path) / "tokenizer.json").exists()


@pytest.mark.parametrize("kw", [
    # dropout exercises the saved RNG streams, accumulation and Muon the saved optimizer state
    dict(optimizer="muon", tokens_per_step=2 * 4 * 32, model={"dropout": 0.1}, sampling="random"),
    dict(optimizer="adamw", sampling="sequential", schedule="wsd", progress="bar"),
])
def test_resume_is_bit_exact(data, tmp_path, kw):
    kw = dict(max_steps=10, decay_steps=10, eval_interval=3, **kw)
    full = train(cfg_for(data, tmp_path / "full", **kw))
    part = train(cfg_for(data, tmp_path / "part", **{**kw, "max_steps": 5}))
    assert part["step"] == 5 and part["stopped_by"] == "max_steps"
    resumed = train(resume_config(tmp_path / "part", {"max_steps": 10}), resume=True)
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")  # exact float equality
    assert len(train_losses(tmp_path / "full")) == 10
    assert resumed["val_loss"] == full["val_loss"] and resumed["tokens"] == full["tokens"]
    a, _ = load_checkpoint(tmp_path / "full")
    b, _ = load_checkpoint(tmp_path / "part")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


def _cli_env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def _cli_args(data, out, **kw):
    args = ["--data", str(data), "--out", str(out)]
    for k, v in {**BASE, **TINY_GPT, **kw}.items():
        if k == "model":
            for mk, mv in v.items():
                args += ["--model", f"{mk}={mv}"]
        else:
            args += ["--" + k.replace("_", "-"), str(v)]
    return args


def _start(data, run, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gptforge", "pretrain", *_cli_args(data, run, **kw)],
                            env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(run: Path, n: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    f = run / "metrics.jsonl"
    while time.time() < deadline and not (f.exists() and len(f.read_text().splitlines()) > n):
        time.sleep(0.02)


def _resume_cli(run: Path, max_steps: int) -> None:
    rc = subprocess.run([sys.executable, "-m", "gptforge", "pretrain", "--resume", str(run),
                         "--max-steps", str(max_steps)], env=_cli_env(), capture_output=True, text=True,
                        timeout=60)
    assert rc.returncode == 0, rc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_exits_0_and_resumes_exactly(data, tmp_path, sig):
    run = tmp_path / "run"
    kw = dict(max_steps=100_000, decay_steps=40, eval_interval=10**6)
    proc = _start(data, run, **kw)
    _wait_for_steps(run, 3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sig.name in err and "--resume" in err
    _, state = load_checkpoint(run)
    k = state.step
    assert 3 <= k < 100_000
    # resume for 3 more steps from the command line; compare with an uninterrupted run in process
    _resume_cli(run, k + 3)
    train(cfg_for(data, tmp_path / "ref", **{**kw, "max_steps": k + 3}))
    assert train_losses(run) == train_losses(tmp_path / "ref")


def test_kill_9_leaves_the_last_checkpoint_and_resume_is_exact(data, tmp_path):
    run = tmp_path / "run"
    kw = dict(max_steps=100_000, decay_steps=40, eval_interval=10**6, ckpt_interval=2, keep_last=1)
    proc = _start(data, run, **kw)
    _wait_for_steps(run, 6)
    proc.kill()  # SIGKILL: no handler runs, likely mid-step or mid-save
    proc.communicate(timeout=60)
    _, state = load_checkpoint(run)
    k = state.step
    assert k >= 2 and k % 2 == 0
    _resume_cli(run, k + 3)  # drops the metrics logged after step k, then continues
    train(cfg_for(data, tmp_path / "ref", **{**kw, "max_steps": k + 3}))
    assert train_losses(run) == train_losses(tmp_path / "ref")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_with_accumulation(data, tmp_path):
    kw = dict(max_steps=6, eval_interval=3, optimizer="muon", sampling="random")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
           "-m", "gptforge", "pretrain", *_cli_args(data, tmp_path / "ddp", **kw)]
    rc = subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True, timeout=120)
    assert rc.returncode == 0, rc.stderr[-3000:]
    single = train(cfg_for(data, tmp_path / "one", tokens_per_step=2 * 4 * 32, **kw))
    ddp_recs, one_recs = metrics(tmp_path / "ddp"), metrics(tmp_path / "one")
    assert [r["step"] for r in ddp_recs] == [r["step"] for r in one_recs]
    for a, b in zip(ddp_recs, one_recs, strict=True):
        for key in ("train_loss", "val_loss", "val_bpb"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)
    assert a["tokens"] == b["tokens"] == 6 * 2 * 4 * 32
    st = json.loads((Path(single["checkpoint"]).parent / "step_000006" / "trainer.json").read_text())
    ddp_st = json.loads((tmp_path / "ddp" / "ckpt" / "step_000006" / "trainer.json").read_text())
    assert ddp_st["world_size"] == 2 and len(ddp_st["rng"]) == 2 and st["world_size"] == 1


def _torchrun(*args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "gptforge", "pretrain", *args]
    rc = subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True, timeout=180)
    assert rc.returncode == 0, rc.stderr[-3000:]


def test_fsdp_two_processes_equal_one_and_resume_exactly(data, tmp_path):
    """--parallel fsdp (FSDP2 on gloo, Muon's Newton-Schulz on sharded matrices): 2 processes give
    the losses of 1 process with accumulation; the checkpoint is the one-process format; resuming
    it sharded is exact, and in 1 process (the world size changes) continues as the 1-process run.
    9 eval windows: the ranks run 2 and 1 eval batches, which FSDP's collective forward must survive."""
    kw = dict(max_steps=4, decay_steps=6, eval_interval=2, eval_tokens=9 * 32, optimizer="muon",
              sampling="random", tokens_per_step=2 * 4 * 32, keep_last=4,
              dtype="float32")  # bf16 autocast rounds sharded and whole matmuls differently
    run = tmp_path / "fsdp"
    _torchrun(*_cli_args(data, run, parallel="fsdp", **kw))
    train(cfg_for(data, tmp_path / "one", **{**kw, "max_steps": 6}))
    fsdp_recs, one_recs = metrics(run), metrics(tmp_path / "one")
    assert [r["step"] for r in fsdp_recs] == [r["step"] for r in one_recs[:len(fsdp_recs)]] == [0, 1, 2, 3, 4]
    for a, b in zip(fsdp_recs, one_recs, strict=False):
        for key in ("train_loss", "val_loss", "val_bpb"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)
    sharded, _ = load_checkpoint(run)  # one process reads what two wrote, as the one-process run wrote it
    single, _ = load_checkpoint(tmp_path / "one" / "ckpt" / "step_000004")
    assert sharded.state_dict().keys() == single.state_dict().keys()
    for k, v in single.state_dict().items():
        assert sharded.state_dict()[k] == pytest.approx(v, abs=1e-5), k
    # exact resume under FSDP: from step 2 of a copy, to step 4
    shutil.copytree(run, tmp_path / "again")
    (tmp_path / "again" / "ckpt" / "latest").write_text("step_000002")
    _torchrun("--resume", str(tmp_path / "again"), "--max-steps", "4")
    assert train_losses(tmp_path / "again") == train_losses(run)
    # the world size changes: 2 -> 1
    train(resume_config(run, {"max_steps": 6}), resume=True)
    resumed, ref = train_losses(run), train_losses(tmp_path / "one")
    assert list(resumed) == list(ref) == [1, 2, 3, 4, 5, 6]
    assert list(resumed.values()) == pytest.approx(list(ref.values()), abs=1e-5)


def test_budgets_and_best_checkpoint(data, tmp_path):
    s = train(cfg_for(data, tmp_path / "tok", max_tokens=5 * 4 * 32 - 1, max_steps=100))
    assert s["stopped_by"] == "max_tokens" and s["step"] == 5
    s = train(cfg_for(data, tmp_path / "time", max_time=1.0, max_steps=10**6, eval_interval=10**6))
    assert s["stopped_by"] == "max_time" and s["step"] > 0 and s["time_s"] < 10
    assert s["checkpoint"].endswith(f"step_{s['step']:06d}")
    # best = lowest val loss among evaluated checkpoints: with an absurd lr the loss rises after step 2
    s = train(cfg_for(data, tmp_path / "best", max_steps=8, eval_interval=2, warmup_steps=0, lr=3.0,
                      grad_clip=0.0, schedule="wsd", min_lr_frac=1.0, keep_last=1))
    vals = {r["step"]: r["val_loss"] for r in metrics(tmp_path / "best") if "val_loss" in r and r["step"]}
    best_step = min(vals, key=vals.get)
    _, st = load_checkpoint(tmp_path / "best", which="best")
    assert st.step == best_step and st.val_loss == vals[best_step]
    kept = {p.name for p in (tmp_path / "best" / "ckpt").iterdir()}
    assert kept == {"best", "latest", f"step_{best_step:06d}", "step_000008"}


def test_a_slow_first_step_is_no_forecast(data, tmp_path, monkeypatch):
    """The first step holds one-off costs (torch.compile took 33 s of a GPU run's first step) and
    must not stop a max_time run after one step: the GPU check's gpu-small stage did."""
    import gptforge.train.loop as loop

    real, calls = loop.optimizer_step, []

    def slow_first(*args, **kwargs):  # the real step, 1.5 s late the first time only
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", slow_first)
    s = train(cfg_for(data, tmp_path / "slow", max_time=2.5, max_steps=10**6, eval_interval=10**6))
    # forecasting from the 1.5 s step stops at step 1 (1.5 + 1.5 > 2.5); later steps take milliseconds
    assert s["stopped_by"] == "max_time" and s["step"] > 3


@pytest.mark.parametrize("flags, dtype", [("fma avx2 avx512f", "float32"),
                                          ("fma avx2 avx512f avx512_bf16", "bfloat16")])
def test_dtype_auto_trains_in_bf16_only_on_a_cpu_with_bf16_instructions(data, tmp_path, monkeypatch, capfd,
                                                                          flags, dtype):
    from gptforge.train import mfu

    real = mfu._read
    monkeypatch.setattr(mfu, "_read", lambda path: (f"processor\t: 0\nflags\t\t: {flags}\n"
                                                    if path == "/proc/cpuinfo" else real(path)))
    s = train(cfg_for(data, tmp_path / dtype, max_steps=2, dtype="auto", progress="log"))
    assert s["step"] == 2 and f"on cpu, {dtype}," in capfd.readouterr().out


def test_schedule_time_replans_the_wsd_schedule_to_fill_its_seconds(data, tmp_path):
    """Steps slowed to >= 25 ms each: a 2 s schedule first planned at 30 steps (too few) or 300
    (too many) is re-planned from the measured step times, warmdown included, to end near 2 s."""
    import dataclasses

    from gptforge.train.session import shard_data

    def slow(loss_fn):
        def fn(model, batch):
            time.sleep(0.025)
            return loss_fn(model, batch)
        return fn

    for first_plan in (30, 300):
        cfg = cfg_for(data, tmp_path / f"plan{first_plan}", max_steps=first_plan, schedule="wsd",
                      warmdown_frac=0.4, warmup_steps=2, min_lr_frac=0.0, schedule_time=2.0,
                      eval_interval=10**6)
        d = shard_data(cfg)
        s = train(cfg, data=dataclasses.replace(d, loss_fn=slow(d.loss_fn)))
        assert s["stopped_by"] == "max_steps" and 30 < s["step"] < 80, s["step"]  # ~25-30 ms a step
        assert 1.6 <= s["train_time_s"] <= 2.5, s["train_time_s"]  # 2 s / 1.03 planned
        lrs = [r["lr"] / cfg.lr for r in metrics(cfg.out) if "lr" in r]
        after = lrs[lrs.index(1.0):]  # past the warmup: flat, then one linear warmdown to ~0
        k = after.count(1.0)
        assert after[:k] == [1.0] * k and after[k:] == sorted(after[k:], reverse=True) and after[-1] < 0.1
        assert len(after[k:]) == round(0.4 * s["step"]) - 1  # the warmdown of the final plan
        st = json.loads((Path(s["checkpoint"]) / "trainer.json").read_text())
        assert st["schedule_steps"] == s["step"]
    with pytest.raises(UserError, match="schedule_time re-plans a wsd schedule"):
        train(cfg_for(data, tmp_path / "cos", schedule="cosine", schedule_time=1.0))


def test_a_run_killed_before_its_first_checkpoint_can_start_again(data, tmp_path):
    """Issue 27.4: the folder could neither be reused ("already holds a run") nor resumed ("no
    checkpoint here"); with no checkpoint there is nothing to keep, so a fresh start reuses it."""
    import shutil

    train(cfg_for(data, tmp_path / "run", max_steps=2))
    shutil.rmtree(tmp_path / "run" / "ckpt")  # what a kill before the first save leaves: log and config
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    s = train(cfg_for(data, tmp_path / "run", max_steps=1))
    assert s["step"] == 1 and [r["step"] for r in metrics(tmp_path / "run") if "train_loss" in r] == [1]


def test_user_errors(data, tmp_path):
    train(cfg_for(data, tmp_path / "run", max_steps=1))
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg_for(data, tmp_path / "run", max_steps=1))
    with pytest.raises(UserError, match="depth cannot change"):
        resume_config(tmp_path / "run", {"depth": 2})
    with pytest.raises(UserError, match="no checkpoint here"):
        resume_config(tmp_path, {})
    with pytest.raises(UserError, match="no such shard directory"):
        train(cfg_for(tmp_path / "missing", tmp_path / "x"))
    with pytest.raises(UserError, match="multiple of"):
        train(cfg_for(data, tmp_path / "y", tokens_per_step=100))
    with pytest.raises(UserError, match="unknown key 'n_embdd'; did you mean 'n_embd'"):
        train(cfg_for(data, tmp_path / "z", model={"n_embdd": 8}))
    # resuming with the model settings it already has is no change (issue 17: it was refused)
    saved_model = resume_config(tmp_path / "run", {}).model
    assert resume_config(tmp_path / "run", {"model": dict(saved_model)}).model == saved_model
    with pytest.raises(UserError, match="model cannot change"):
        resume_config(tmp_path / "run", {"model": {"n_embd": saved_model.get("n_embd", 0) + 64}})
    # incompatible checkpoints: other shards' tokenizer; a model config that cannot be built
    from gptforge.data.shards import prepare
    from gptforge.tokenizer import CharTokenizer

    (tmp_path / "other.txt").write_text("abc " * 2000)
    prepare(str(tmp_path / "other.txt"), CharTokenizer.train("abc "), tmp_path / "other", workers=1,
            progress=False)
    with pytest.raises(UserError, match=r"different tokenizer than the checkpoint .*step_000001"):
        train(resume_config(tmp_path / "run", {"data": str(tmp_path / "other")}), resume=True)
    tj = tmp_path / "run" / "ckpt" / "step_000001" / "trainer.json"
    st = json.loads(tj.read_text())
    st["model_config"]["n_head"] = 3
    tj.write_text(json.dumps(st))
    with pytest.raises(UserError, match=r"step_000001/trainer.json: cannot build the model"):
        train(resume_config(tmp_path / "run", {}), resume=True)


def test_help_lists_every_config_key(capsys):
    from gptforge.config import specs
    from gptforge.train.config import TrainConfig

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    for name, s in specs(TrainConfig).items():
        flag = "--model KEY=VALUE" if name == "model" else "--" + name.replace("_", "-")
        assert flag in out
        if name != "model":
            assert " ".join(s.help.split()[:3]) in " ".join(out.split())  # the field's own help text
    assert "--resume RUN_DIR" in out and "torchrun" in out and "(default: 'adamw')" in out


def test_cli_pretrain_plot_and_errors(data, tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text('arch = "bigram"\nmax_steps = 3\neval_interval = 2\n')
    for name in ("a", "b"):
        assert main(["pretrain", "--config", str(toml), "--data", str(data), "--out", str(tmp_path / name),
                     "--threads", "1", "--progress", "log", "--lr", "0.1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\n  arch += 'bigram'\n", out) and "stopped by max_steps at step 3" in out
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "l.png")]) == 0
    assert (tmp_path / "l.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    # a user's mistake: exit 2, one line on stderr naming the problem
    assert main(["pretrain", "--data", str(tmp_path / "nope")]) == 2
    (tmp_path / "a" / "ckpt" / "step_000003" / "trainer.json").write_text("{")
    assert main(["pretrain", "--resume", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nope" in err[0] and "step_000003/trainer.json: corrupt" in err[1]


def test_a_second_run_into_a_live_run_dir_is_refused(data, tmp_path):
    run = tmp_path / "run"
    proc = _start(data, run, max_steps=100_000, eval_interval=10**6, ckpt_interval=1)
    try:
        _wait_for_steps(run, 3)
        for resume in (False, True):  # neither a fresh run nor a resume may write into a live run
            cfg = cfg_for(data, run, max_steps=1) if not resume else resume_config(run, {})
            with pytest.raises(UserError, match="another gptforge run is using this directory"):
                train(cfg, resume=resume)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_default_run_dirs_never_collide(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = train(cfg_for(data, "", max_steps=1))["run_dir"]
    b = train(cfg_for(data, "", max_steps=1))["run_dir"]  # the same second, most likely
    assert a != b and Path(a).parent == Path(b).parent == Path("runs")


def test_progress_on_a_pseudo_terminal(data, tmp_path):
    """Under a terminal (a pty here) the bar is drawn as steps go, not only at the end."""
    import pty

    leader, follower = pty.openpty()
    args = _cli_args(data, tmp_path / "run", max_steps=30, eval_interval=10)
    args[args.index("--progress") + 1] = "auto"
    proc = subprocess.Popen([sys.executable, "-m", "gptforge", "pretrain", *args], env=_cli_env(),
                            stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(leader)
    text = seen.decode("utf-8", "replace")
    assert proc.returncode == 0, text[-2000:]
    assert "30/30" in text and "tok/s" in text and "\r" in text  # a live bar redrawn in place
    assert "val loss" in text and "stopped by max_steps" in text


def test_log_lines_when_not_a_terminal(data, tmp_path):
    args = _cli_args(data, tmp_path / "run", max_steps=8)
    args[args.index("--progress") + 1] = "auto"
    r = subprocess.run([sys.executable, "-m", "gptforge", "pretrain", *args, "--log-interval", "0.001"],
                       env=_cli_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("step ") and "tok/s" in ln]
    assert len(lines) == 8 and "ETA" in lines[0] and lines[-1].startswith("step 8/8")


def test_a_moved_run_resumes_from_anywhere(data, tmp_path, monkeypatch, capsys):
    proj = tmp_path / "proj"
    shutil.copytree(data, proj / "data")
    monkeypatch.chdir(proj)  # started with paths relative to this directory, as the speedrun does
    tiny = ["--depth", "1", "--model", "n_embd=16", "--model", "n_head=1", "--batch-size", "2",
            "--block-size", "16", "--eval-tokens", "64", "--threads", "1", "--progress", "none"]
    assert main(["pretrain", "--data", "data", "--out", "runs/a", "--max-steps", "2", *tiny]) == 0
    assert json.loads((proj / "runs/a/config.json").read_text())["data"] == "../../data"
    shutil.move(proj, tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved" / "runs")  # another working directory, another folder
    assert main(["pretrain", "--resume", "a", "--max-steps", "3"]) == 0
    assert main(["inspect", "batch", "--run", "a", "--step", "1", "--rows", "1"]) == 0
    assert load_checkpoint("a")[1].step == 3
    (tmp_path / "moved" / "data").rename(tmp_path / "moved" / "data2")
    capsys.readouterr()
    assert main(["pretrain", "--resume", "a", "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "the run's shard directory" in err and "--data DIR overrides it" in err
    assert main(["inspect", "batch", "--run", "a", "--step", "1"]) == 2
    assert "--data DIR overrides it" in capsys.readouterr().err
    assert main(["pretrain", "--resume", "a", "--max-steps", "4", "--data", "../data2"]) == 0
    assert load_checkpoint("a")[1].step == 4
