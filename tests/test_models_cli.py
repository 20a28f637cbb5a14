"""`gptforge model info`: its table agrees with the models' own num_params() and flops_per_token()."""

import re

import pytest
import torch

from gptforge.cli import main
from gptforge.models import build_model


def run_info(capsys, *argv):
    assert main(["model", "info", *argv]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^(\S.*?)\s{2,}([\d,]+)(?:\s+[\d.]+%)?(?:\s+\(.*\))?$", out, flags=re.M))
    return out, {k: int(v.replace(",", "")) for k, v in rows.items()}


@pytest.mark.parametrize("argv, arch, vocab, block, config", [
    (["--preset", "gpt2"], "gpt", 50257, 1024, dict(preset="gpt2")),
    (["--preset", "gpt2", "--depth", "2", "--vocab-size", "300", "--block-size", "64"], "gpt", 300, 64,
     dict(preset="gpt2", depth=2)),
    (["--depth", "4", "--model", "n_kv_head=1", "--model", "mlp=swiglu", "--model", "tie_embeddings=true"],
     "gpt",
     50304, 2048, dict(preset="modern", depth=4, n_kv_head=1, mlp="swiglu", tie_embeddings=True)),
    (["--arch", "mlp", "--model", "direct=true", "--vocab-size", "65"], "mlp", 65, 256, dict(direct=True)),
    (["--arch", "lstm", "--model", "n_layer=3"], "lstm", 256, 256, dict(n_layer=3)),
    (["--arch", "bigram"], "bigram", 256, 256, {}),
])
def test_info_agrees_with_the_model(capsys, argv, arch, vocab, block, config):
    out, rows = run_info(capsys, *argv)
    with torch.device("meta"):
        model = build_model(arch, vocab, block, **config)
    assert rows["total"] == model.num_params()
    assert rows["non-embedding (N in 6N)"] == model.num_params(exclude_embeddings=True)
    for name, n in model.param_counts().items():
        assert rows[name] == n, name
    assert rows["FLOPs per token"] == model.flops_per_token()
    assert rows["6N"] == 6 * model.num_params(exclude_embeddings=True)
    assert rows["6N"] + rows["attention 12*n_layer*n_embd*T"] == rows["FLOPs per token"]
    assert f"vocab_size={vocab}, block_size={block}" in out


def test_info_gpt2_small_figures(capsys):
    _, rows = run_info(capsys, "--preset", "gpt2", "--depth", "12")
    assert rows["total"] == 124_439_808  # GPT-2 small
    assert rows["lm_head (tied to wte)"] == 0
    assert rows["FLOPs per token"] == 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024


@pytest.mark.parametrize("argv, message", [
    (["--model", "n_heads=3"], "--model: unknown key 'n_heads'; did you mean 'n_head'?"),
    (["--model", "oops"], "KEY=VALUE"),
    (["--model", "bias=maybe"], "--model: bias='maybe': expected a boolean"),
    (["--arch", "lstm", "--model", "qk_norm=true"], "--model: unknown key 'qk_norm'"),
    (["--arch", "lstm", "--depth", "3"], "--depth applies to --arch gpt"),
    (["--vocab-size", "0"], "vocab_size='0': expected an integer >= 1"),
    (["--depth", "2", "--model", "n_embd=100", "--model", "n_head=3"], "divisible"),
])
def test_info_user_errors_exit_2(capsys, argv, message):
    assert main(["model", "info", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptforge: error: ") and message in err and err.count("\n") == 1
