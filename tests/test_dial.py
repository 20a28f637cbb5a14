"""The depth dial (``--dial``): the derived values follow nanochat's rules, the explicit ones win,
and without the dial nothing changes."""

import json
import math

import pytest
import torch
from helpers import shakespeare_char_shards

from gptforge.cli import build_parser
from gptforge.cli.pretrain import config_from_args
from gptforge.models import build_model
from gptforge.train.config import TrainConfig, depth_dial, make_config


def test_derived_values_follow_nanochats_rules():
    cfg = make_config({"dial": True, "batch_size": 4, "block_size": 64})
    N, N_ref = 3_000_000, 85_000_000
    values, lines = depth_dial(cfg, set(), N, N_ref, micro_tokens=256)
    # the rules written out as nanochat's scripts/base_train.py computes them
    D, D_ref, B_ref = 12 * N, 12 * N_ref, 2 ** 19
    B = 2 ** round(math.log2(B_ref * (D / D_ref) ** 0.383))
    assert values["tokens_per_step"] == B == 131072
    assert values["max_steps"] == D // B
    assert values["lr"] == pytest.approx(3e-3 * (B / B_ref) ** 0.5)
    assert values["muon_lr"] == pytest.approx(0.02 * (B / B_ref) ** 0.5)
    assert values["weight_decay"] == pytest.approx(0.1 * (B / B_ref) ** 0.5 * D_ref / D)
    assert len(lines) == 6 and all("=" in line for line in lines)
    # at the reference the batch is B_ref and nothing is corrected
    values, _ = depth_dial(cfg, set(), N_ref, N_ref, micro_tokens=256)
    assert values["tokens_per_step"] == B_ref and values["lr"] == pytest.approx(3e-3)
    assert values["weight_decay"] == pytest.approx(0.1)


def test_explicit_values_win_and_feed_the_rules():
    cfg = make_config({"dial": True, "tokens_per_step": 4096, "lr": 0.5, "param_data_ratio": 20})
    values, lines = depth_dial(cfg, {"tokens_per_step", "lr", "param_data_ratio"}, 1_000_000, 8_000_000, 2048)
    assert "tokens_per_step" not in values and "lr" not in values
    assert values["max_steps"] == 20 * 1_000_000 // 4096
    assert values["muon_lr"] == pytest.approx(0.02 * (4096 / 2 ** 19) ** 0.5)
    assert any("lr = 0.5 (set, not derived)" in line for line in lines)


def test_the_command_line_applies_the_dial(tmp_path, capsys):
    data = shakespeare_char_shards(tmp_path, 20_000)
    argv = ["pretrain", "--data", str(data), "--depth", "2", "--batch-size", "4", "--block-size", "32"]
    plain, _ = config_from_args(build_parser("pretrain").parse_args(argv))
    assert plain == make_config({"data": str(data), "depth": 2, "batch_size": 4, "block_size": 32})
    cfg, _ = config_from_args(build_parser("pretrain").parse_args([*argv, "--dial", "--max-steps", "7"]))
    err = capsys.readouterr().err
    assert "depth dial:" in err and "max_steps = 7 (set, not derived)" in err
    vocab = json.loads((data / "meta.json").read_text())["tokenizer"]["vocab_size"]
    with torch.device("meta"):
        n = build_model("gpt", vocab_size=vocab, block_size=32, depth=2).num_params(exclude_embeddings=True)
    assert f"N = {n:,} parameters" in err
    assert cfg.max_steps == 7 and cfg.tokens_per_step % 128 == 0 and cfg.tokens_per_step > 128
    assert cfg.lr < TrainConfig.lr and cfg.weight_decay != TrainConfig.weight_decay
