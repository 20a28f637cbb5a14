"""The GPU code paths, run on the CPU (issue 31.5): bf16 autocast and torch.compile for a few steps,
and the gpu-small and gpt2 presets at tiny depth through `gptforge speedrun` with `--train
device=cpu`, the command bench/gpu_check.sh runs on a GPU."""

import json
import math
import shutil

import pytest
from helpers import shakespeare_char_shards

from gptforge.cli import main
from gptforge.train import Logger, make_config, train

TINY = {"depth": 1, "block_size": 32, "batch_size": 4, "max_steps": 4, "eval_tokens": 256,
        "eval_interval": 100, "threads": 1, "device": "cpu", "warmup_steps": 0,
        "model": {"n_embd": 32, "n_head": 2}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return shakespeare_char_shards(tmp_path_factory.mktemp("gpu-paths"), 20_000)


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


def run(shards, out, **over) -> list[float]:
    train(make_config({**TINY, "data": str(shards), "out": str(out), **over}), logger=Logger("none"))
    return losses(out)


def test_bf16_autocast_trains_close_to_fp32(shards, tmp_path):
    fp32 = run(shards, tmp_path / "fp32", dtype="float32")
    bf16 = run(shards, tmp_path / "bf16", dtype="bfloat16")
    assert len(bf16) == 4 and all(math.isfinite(x) for x in bf16)
    assert bf16 != fp32  # autocast really ran in bf16 (8-bit mantissas change the sums)
    assert bf16 == pytest.approx(fp32, rel=0.01)


def speedrun_pretrain(shards, out, preset: str, *train: str) -> list[float]:
    """`gptforge speedrun --preset PRESET --only pretrain` on the CPU at tiny size."""
    shutil.copytree(shards, out / "data")
    args = ["speedrun", "--preset", preset, "--only", "pretrain", "--out", str(out), "--model", "n_embd=64"]
    for t in ("device=cpu", "depth=1", "block_size=32", "batch_size=2", "max_steps=3", "eval_tokens=128",
              "threads=1", *train):
        args += ["--train", t]
    assert main(args) == 0
    cfg = json.loads((out / "pretrain" / "config.json").read_text())
    assert cfg["preset"] == ("gpt2" if preset == "gpt2" else "modern") and cfg["device"] == "cpu"
    return losses(out / "pretrain")


def test_gpu_small_preset_in_bf16(shards, tmp_path):
    """The gpu-small preset as a GPU runs it (bf16 autocast; compile in the next test), on the CPU."""
    got = speedrun_pretrain(shards, tmp_path, "gpu-small", "dtype=bfloat16", "compile=false")
    cfg = json.loads((tmp_path / "pretrain" / "config.json").read_text())
    assert cfg["optimizer"] == "muon" and cfg["dtype"] == "bfloat16" and cfg["schedule"] == "wsd"
    assert len(got) == 3 and all(math.isfinite(x) for x in got)


# torch.compile on the CPU builds C++ kernels: measured 96 s cold (Inductor's cache empty, 2 busy cores;
# about 30 s of CPU time), 21 s warm: in the suite all the same, as the only run of compile's code path
# on the CPU besides bench/gpu_check.sh's dry run (GPU_CHECK_DEVICE=cpu).
def test_gpu_small_preset_compiled_in_bf16_matches_eager(shards, tmp_path):
    """The gpu-small preset with its torch.compile and bf16 autocast against the same preset
    without compile: the compiled graph computes the same losses up to float reordering."""
    (tmp_path / "c").mkdir()
    (tmp_path / "e").mkdir()
    compiled = speedrun_pretrain(shards, tmp_path / "c", "gpu-small", "dtype=bfloat16")
    eager = speedrun_pretrain(shards, tmp_path / "e", "gpu-small", "dtype=bfloat16", "compile=false")
    assert json.loads((tmp_path / "c" / "pretrain" / "config.json").read_text())["compile"] is True
    assert len(compiled) == 3 and all(math.isfinite(x) for x in compiled)
    assert compiled == pytest.approx(eager, rel=0.01)


def test_gpt2_preset_with_gradient_accumulation(shards, tmp_path):
    """The gpt2 preset meets tokens_per_step by accumulating micro-batches, as on a GPU (there
    524,288 tokens = 32 micro-batches of 16 x 1024); here 4 micro-batches of 2 x 32, eager."""
    out = tmp_path / "g"
    out.mkdir()
    got = speedrun_pretrain(shards, out, "gpt2", "tokens_per_step=256", "compile=false")
    assert len(got) == 3 and all(math.isfinite(x) for x in got)
    rows = [json.loads(line) for line in (out / "pretrain" / "metrics.jsonl").open()]
    assert [r["tokens"] for r in rows if "train_loss" in r] == [256, 512, 768]
