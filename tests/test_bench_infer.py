"""bench/infer.py: the bytes a decoding step reads, checked against the real KV cache and weights,
and one quick sweep through its command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptforge.engine import KVCache
from gptforge.models import build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import infer  # noqa: E402  (bench/ is not a package)


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_bytes_per_step_are_the_weights_and_the_kv_cache(preset):
    model = build_model("gpt", vocab_size=300, block_size=64, preset=preset, depth=2).to(torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cache = KVCache(model, 8, 40)  # what decoding 8 rows at 40 positions reads
    kv = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
    assert infer.bytes_per_step(model, 8, 40) == weights + kv


def test_sweep_from_the_command_line(tmp_path):
    out = tmp_path / "infer.json"
    args = ["--depth", "1", "--vocab-size", "64", "--block-size", "32", "--batches", "1,4",
            "--prompt-len", "4", "--new-tokens", "4", "--repeats", "1", "--threads", "1", "--json", str(out)]
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "infer.py"), *args], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert [row["batch"] for row in res["results"]] == [1, 4]
    for row in res["results"]:
        assert row["tokens_per_s"] > 0 and row["latency_ms_per_token"] > 0 and 0 < row["bandwidth_util"]
        # tokens/s and latency are one measurement seen two ways
        per_token_s = row["latency_ms_per_token"] / 1000
        assert row["tokens_per_s"] == pytest.approx(row["batch"] / per_token_s, rel=0.01)
    assert "tokens/s" in r.stdout and "copy bandwidth" in r.stdout
