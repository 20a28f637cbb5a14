"""Weights to and from Hugging Face transformers: GPT2LMHeadModel <-> gpt2 preset, NanoChatForCausalLM <->
modern preset. Random-weight HF models of several shapes are built locally (nothing is downloaded);
logits must agree within 1e-4 (fp32) both ways and greedy generate() must give identical tokens."""

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network, even by accident

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import randomize  # noqa: E402

from gptforge.engine import KVCache  # noqa: E402
from gptforge.errors import UserError  # noqa: E402
from gptforge.models import build_model  # noqa: E402
from gptforge.models.hf import from_hf, hf_arch, save_hf, to_hf  # noqa: E402

transformers = pytest.importorskip("transformers")

V, BLOCK = 97, 48
pytestmark = pytest.mark.usefixtures("one_torch_thread")



GPT2_SHAPES = {
    "2x4x32": dict(n_layer=2, n_head=4, n_embd=32),
    "3x3x48-untied-inner80": dict(n_layer=3, n_head=3, n_embd=48, n_inner=80, layer_norm_epsilon=1e-6,
                                  tie_word_embeddings=False),
}
NANOCHAT_SHAPES = {
    "2x4x32": dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=128),
    "3x4x64-gqa-tied-nocap": dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                  hidden_size=64, intermediate_size=96, tie_word_embeddings=True,
                                  final_logit_softcapping=None, rms_norm_eps=1e-5,
                                  rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    "2x2x32-mqa-cap5": dict(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, hidden_size=32,
                            intermediate_size=64, final_logit_softcapping=5.0),
}


def hf_gpt2(**shape):
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=BLOCK, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, **shape)
    return randomize(transformers.GPT2LMHeadModel(cfg))


def hf_nanochat(**shape):
    cfg = transformers.NanoChatConfig(vocab_size=V, max_position_embeddings=BLOCK, bos_token_id=None,
                                      eos_token_id=None, pad_token_id=None, **shape)
    return randomize(transformers.NanoChatForCausalLM(cfg))


def greedy(model, prompt, n):
    """Our greedy decoding, token by token through the KV cache: (B, T0) -> (B, T0 + n)."""
    cache = KVCache(model, prompt.size(0), BLOCK)
    seq = prompt
    with torch.no_grad():
        logits, _ = model(prompt, kv_cache=cache)
        for _ in range(n):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            logits, _ = model(nxt, kv_cache=cache, pos=seq.size(1) - 1)
    return seq


def hf_greedy(hf, prompt, n):
    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0, eos_token_id=None)


def assert_same_model(ours, hf):
    torch.manual_seed(5)
    idx = torch.randint(0, V, (3, BLOCK))
    with torch.no_grad():
        ref = hf(idx).logits
        logits, loss = ours(idx, idx)
    assert ref.std() > 0.5  # the weights are far from any trivial init
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
    prompt = idx[:2, :6]
    assert torch.equal(greedy(ours, prompt, 24), hf_greedy(hf, prompt, 24))


@pytest.mark.parametrize("shape", GPT2_SHAPES)
def test_gpt2_import(shape, tmp_path):
    hf = hf_gpt2(**GPT2_SHAPES[shape])
    ours = from_hf(hf)
    assert ours.config.positional == "learned" and ours.config.tie_embeddings == hf.config.tie_word_embeddings
    assert_same_model(ours, hf)
    hf.save_pretrained(tmp_path)  # an HF folder: config.json + model.safetensors
    assert_same_model(from_hf(tmp_path), hf)


def test_gpt2_bare_state_dict_like_openai_release():
    # OpenAI's gpt2 files: no "transformer." prefix, causal-mask buffers, no lm_head (tied)
    hf = hf_gpt2(**GPT2_SHAPES["2x4x32"])
    sd = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, BLOCK, BLOCK))
    with pytest.raises(UserError, match="pass n_head"):
        from_hf(sd)
    assert_same_model(from_hf(sd, n_head=4), hf)


@pytest.mark.parametrize("shape", [dict(depth=2, n_embd=32, n_head=4),
                                   dict(depth=3, n_embd=48, n_head=3, mlp_hidden=80, tie_embeddings=False)])
def test_gpt2_export(shape, tmp_path):
    torch.manual_seed(0)
    ours = randomize(build_model("gpt", V, BLOCK, preset="gpt2", **shape))
    assert hf_arch(ours.config) == "gpt2"
    hf = to_hf(ours)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert_same_model(ours, hf)
    save_hf(ours, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    assert_same_model(ours, loaded)
    back = from_hf(tmp_path)
    assert back.config == ours.config
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


@pytest.mark.parametrize("shape", NANOCHAT_SHAPES)
def test_nanochat_import(shape, tmp_path):
    hf = hf_nanochat(**NANOCHAT_SHAPES[shape])
    ours = from_hf(hf)
    assert ours.config.positional == "rope" and ours.config.qk_norm and ours.config.embd_norm
    assert_same_model(ours, hf)
    hf.save_pretrained(tmp_path)
    assert_same_model(from_hf(tmp_path), hf)


@pytest.mark.parametrize("shape", [dict(depth=2, n_embd=32, n_head=4),
                                   dict(depth=2, n_embd=64, n_head=4, n_kv_head=2, tie_embeddings=True,
                                        logit_softcap=None, rope_theta=500.0, norm_eps=1e-5, mlp_hidden=96)])
def test_nanochat_export(shape, tmp_path):
    torch.manual_seed(0)
    ours = randomize(build_model("gpt", V, BLOCK, preset="modern", **shape))
    assert hf_arch(ours.config) == "nanochat"
    hf = to_hf(ours)
    assert type(hf).__name__ == "NanoChatForCausalLM"
    assert_same_model(ours, hf)
    save_hf(ours, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "NanoChatForCausalLM"
    assert_same_model(ours, loaded)
    assert from_hf(tmp_path).config == ours.config


@pytest.mark.parametrize("override, field", [
    (dict(preset="modern", mlp="swiglu"), "mlp='swiglu'"),
    (dict(preset="modern", mlp="gelu"), "mlp='gelu'"),
    (dict(preset="modern", qk_norm=False), "qk_norm=False"),
    (dict(preset="modern", embd_norm=False), "embd_norm=False"),
    (dict(preset="modern", norm="layernorm"), "norm='layernorm'"),
    (dict(preset="gpt2", logit_softcap=30.0), "logit_softcap=30.0"),
    (dict(preset="gpt2", n_kv_head=1), "n_kv_head=1"),
])
def test_architectures_that_do_not_fit_are_refused(override, field, tmp_path):
    model = build_model("gpt", V, BLOCK, depth=1, n_embd=32, n_head=2, **override)
    with pytest.raises(UserError, match="fits neither") as err:
        save_hf(model, tmp_path)
    assert field in str(err.value)


def test_unsupported_hf_configs_are_refused():
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=BLOCK, n_embd=32, n_layer=1, n_head=2,
                                  activation_function="gelu")
    hf = transformers.GPT2LMHeadModel(cfg)
    with pytest.raises(UserError, match="activation_function 'gelu'"):
        from_hf(hf)
    with pytest.raises(UserError, match="no config.json"):
        from_hf(os.devnull.rsplit("/", 1)[0])


def test_transformers_is_imported_lazily(tmp_path):
    # reading and writing HF folders needs only safetensors; training never needs transformers
    code = ("import sys, gptforge.models as m, gptforge.models.hf as hf; "
            "hf.save_hf(m.build_model('gpt', 10, 8, preset='gpt2', depth=1, n_embd=8), sys.argv[1]); "
            "hf.from_hf(sys.argv[1]); assert 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
