"""GPT specifics: presets and the depth dial, the KV cache against full forward passes."""

import pytest
import torch
from helpers import randomize

from gptforge.engine import KVCache
from gptforge.models import GPT, build_model, gpt_config
from gptforge.models import cpu as cpu_kernels

V = 71
pytestmark = pytest.mark.usefixtures("one_torch_thread")


CACHE_CASES = {
    "gpt2": dict(preset="gpt2", depth=2, n_embd=32, n_head=4),
    "gpt2-gqa": dict(preset="gpt2", depth=2, n_embd=32, n_head=4, n_kv_head=2),
    "modern": dict(preset="modern", depth=2, n_embd=32, n_head=4),
    "modern-gqa": dict(preset="modern", depth=2, n_embd=48, n_head=6, n_kv_head=2),
    "modern-mqa-swiglu": dict(preset="modern", depth=2, n_embd=32, n_head=4, n_kv_head=1, mlp="swiglu"),
}


def make(name, block_size=32):
    torch.manual_seed(0)
    return randomize(build_model("gpt", V, block_size, **CACHE_CASES[name]))


@pytest.mark.parametrize("name", CACHE_CASES)
def test_greedy_decode_with_kv_cache_equals_full_forward(name):
    model = make(name)
    torch.manual_seed(1)
    seq = torch.randint(0, V, (2, 5))  # prompt, B = 2
    cache = KVCache(model, batch_size=2, max_len=32)
    with torch.no_grad():
        logits, _ = model(seq, kv_cache=cache)  # prefill: positions 0..4
        steps = [logits]
        for _ in range(20):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1) greedy
            seq = torch.cat([seq, nxt], dim=1)
            logits, _ = model(nxt, kv_cache=cache, pos=seq.size(1) - 1)
            steps.append(logits)
        assert seq.size(1) == 25
        cached = torch.cat(steps, dim=1)  # (B, 25, V)
        full, _ = model(seq)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
    assert torch.equal(cached.argmax(-1)[:, 4:-1], seq[:, 5:])  # decoded tokens = the full pass's argmaxes


@pytest.mark.parametrize("name", ["gpt2", "modern-gqa"])
def test_chunked_prefill_builds_the_offset_causal_mask(name):
    model = make(name)
    seq = torch.randint(0, V, (2, 30))
    cache = KVCache(model, 2)
    with torch.no_grad():
        full, _ = model(seq)
        chunks, start = [], 0
        for size in (4, 3, 1, 7, 2, 13):  # several new tokens at a non-zero position
            chunks.append(model(seq[:, start:start + size], kv_cache=cache, pos=start)[0])
            start += size
        torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-4, rtol=0)
        # reuse for another sequence: the cache keeps no positions, pos says where to write
        again, _ = model(seq[:, :10], kv_cache=cache)
    torch.testing.assert_close(again, full[:, :10], atol=1e-4, rtol=0)


def test_kv_cache_layout_and_limits():
    model = make("modern-gqa")
    cache = KVCache(model, batch_size=3, max_len=8)
    assert cache.k.shape == (2, 3, 2, 8, 8)  # (n_layer, B, n_kv_head, max_len, head_dim)
    assert cache.k[1].shape == (3, 2, 8, 8) and cache.k.dtype == torch.float32
    with torch.no_grad():
        model(torch.randint(0, V, (3, 6)), kv_cache=cache)
        assert cache.k[:, :, :, 6:].abs().sum() == 0 and cache.k[:, :, :, :6].abs().sum() > 0
        with pytest.raises(ValueError, match="KV cache holds 8"):
            model(torch.randint(0, V, (3, 3)), kv_cache=cache, pos=6)
    with pytest.raises(ValueError, match="beyond block_size 32"):
        model(torch.randint(0, V, (1, 33)))


def test_depth_dial():
    small = gpt_config("gpt2")  # GPT-2 small
    assert (small.n_layer, small.n_embd, small.n_head) == (12, 768, 12)
    assert (small.vocab_size, small.block_size) == (50257, 1024)
    assert (gpt_config("gpt2", 24).n_embd, gpt_config("gpt2", 24).n_head) == (1536, 24)
    for depth, width, heads in ((12, 768, 6), (20, 1280, 10), (32, 2048, 16), (5, 384, 3), (1, 128, 1)):
        c = gpt_config("modern", depth)
        assert (c.n_layer, c.n_embd, c.n_head, c.head_dim) == (depth, width, heads, 128)
        assert c.mlp_hidden == 4 * width
    c = gpt_config("modern", 4, n_embd=256)  # width override: heads follow head_dim 128
    assert (c.n_embd, c.n_head, c.n_kv_head) == (256, 2, 2)
    c = gpt_config("modern", 4, n_embd=256, n_head=8, n_kv_head=2, mlp="swiglu")
    assert (c.n_head, c.n_kv_head, c.mlp_hidden) == (8, 2, 704)  # 8/3 * 256 = 682.7 -> 704 (64s)
    assert gpt_config("modern", n_layer=3).n_layer == 3


def test_presets_are_the_documented_recipes():
    g, m = gpt_config("gpt2"), gpt_config("modern")
    recipe = lambda c: (c.positional, c.norm, c.mlp, c.qk_norm, c.tie_embeddings, c.bias, c.logit_softcap,
                        c.embd_norm)
    assert recipe(g) == ("learned", "layernorm", "gelu", False, True, True, None, False)
    assert recipe(m) == ("rope", "rmsnorm", "relu2", True, False, False, 15.0, True)
    with torch.device("meta"):
        modern = GPT(gpt_config("modern", 2, n_embd=64, n_head=2))
    counts = modern.param_counts()
    assert counts["norms"] == 0 and counts["position embedding (wpe)"] == 0  # parameter-free RMSNorm, RoPE
    assert not any(n.endswith("bias") for n, _ in modern.named_parameters())


def test_softcap_bounds_logits():
    model = build_model("gpt", V, 16, preset="modern", depth=1, n_embd=32, n_head=2, logit_softcap=2.0)
    model = randomize(model)
    logits, _ = model(torch.randint(0, V, (2, 16)))
    assert logits.abs().max() < 2.0 and logits.abs().max() > 1.5


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = build_model("gpt", V, 16, preset="gpt2", depth=2, n_embd=32, n_head=2, dropout=0.2)
    idx = torch.randint(0, V, (2, 16))
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_matches_nn_dropout_in_law(p):
    """Our CPU mask: each element zeroed with probability p (each of the four 16-bit pieces of a
    64-bit draw alike), the rest scaled exactly as nn.Dropout scales them; the gradient is the same
    mask; evaluation is the identity; a seed reproduces the mask."""
    n = 1 << 20
    x = torch.randn(n, requires_grad=True)
    drop = cpu_kernels.Dropout(p).train()
    torch.manual_seed(0)
    y = drop(x)
    zero = y == 0
    for lane in range(4):  # lane 3 is the top of each int64, whose sign bit random_ never sets
        assert abs(zero[lane::4].float().mean().item() - p) < 0.005
    ref = torch.nn.Dropout(p).train()(torch.ones(1000))
    scale = ref[ref != 0][0]  # nn.Dropout's 1 / (1 - p), as float32
    assert torch.equal(y[~zero], x.detach()[~zero] * scale)
    y.sum().backward()
    assert torch.equal(x.grad == 0, zero) and bool((x.grad[~zero] == scale).all())
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)
    assert torch.equal(drop.eval()(x), x)


def test_tied_embeddings_share_one_matrix():
    model = build_model("gpt", V, 16, preset="gpt2", depth=1, n_embd=32)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert isinstance(model.transformer.wte, torch.nn.Embedding)
    assert isinstance(model.lm_head, torch.nn.Linear)
