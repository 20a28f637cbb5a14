"""The model zoo's common interface: shapes, loss in nats with masking, step-0 loss, causality,
parameter counts, FLOPs (against torch's own FLOP counter), config round trips."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gptforge.errors import UserError
from gptforge.models import ARCHS, build_model, model_config, model_from_config

V, T = 61, 16
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# tiny shapes of every model and preset
CASES = {
    "bigram": ("bigram", {}),
    "mlp": ("mlp", dict(n_ctx=3, n_embd=8, n_hidden=32)),
    "mlp-direct": ("mlp", dict(n_ctx=3, n_embd=8, n_hidden=32, direct=True)),
    "lstm": ("lstm", dict(n_embd=16, n_hidden=32, n_layer=2)),
    "gpt2": ("gpt", dict(preset="gpt2", depth=2, n_embd=32, n_head=4)),
    "modern": ("gpt", dict(preset="modern", depth=2, n_embd=32, n_head=4)),
    "modern-gqa-tied": ("gpt", dict(preset="modern", depth=2, n_embd=32, n_head=4, n_kv_head=2,
                                    tie_embeddings=True)),
    "swiglu-learned-ln": ("gpt", dict(preset="modern", depth=2, n_embd=32, n_head=2, mlp="swiglu",
                                      positional="learned", norm="layernorm", bias=True, logit_softcap=None)),
}


def make(name, seed=0):
    arch, cfg = CASES[name]
    torch.manual_seed(seed)
    return build_model(arch, V, T, **dict(cfg))


def test_every_arch_is_covered():
    assert {arch for arch, _ in CASES.values()} == set(ARCHS)


@pytest.mark.parametrize("name", CASES)
def test_interface_and_loss_in_nats_with_mask(name):
    model = make(name)
    idx = torch.randint(0, V, (3, T))
    targets = torch.randint(0, V, (3, T))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, T, V) and logits.dtype == torch.float32
    assert loss.shape == () and loss.dtype == torch.float32
    no_logits, no_loss = model(idx)
    assert no_loss is None and torch.allclose(no_logits, logits)
    # reference: mean of -log p(target) over the kept positions, by hand
    logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    keep = torch.rand(3, T) < 0.5
    keep[0, 0] = True
    masked = targets.masked_fill(~keep, -1)
    _, mloss = model(idx, masked)
    assert torch.allclose(mloss, -logp[keep].mean(), atol=1e-6)
    assert torch.allclose(loss, -logp.mean(), atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_step0_loss_is_ln_vocab(name):
    # the first sanity check of any training run (Karpathy, "A Recipe for Training Neural Networks")
    model = make(name)
    torch.manual_seed(1)
    _, loss = model(torch.randint(0, V, (8, T)), torch.randint(0, V, (8, T)))
    assert abs(loss.item() - math.log(V)) < 0.05 * math.log(V), loss.item()


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_step0_loss_full_size_gpt_vocab(preset):
    # at the real vocabulary (ln 50257 = 10.82) and width 768 the tied GPT-2 init puts a large
    # logit on the input token itself; still within 5%
    torch.manual_seed(0)
    model = build_model("gpt", 50257, 64, preset=preset, depth=1, n_embd=768)
    with torch.no_grad():
        _, loss = model(torch.randint(0, 50257, (2, 64)), torch.randint(0, 50257, (2, 64)))
    assert abs(loss.item() - math.log(50257)) < 0.05 * math.log(50257), loss.item()


@pytest.mark.parametrize("name", CASES)
def test_causal_and_trainable(name):
    model = make(name)
    idx = torch.randint(0, V, (2, T))
    t = 9
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % V
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :t], b[:, :t]), "a position saw the future"
    assert not torch.allclose(a[:, t], b[:, t]), "a position ignored its own token"
    # every parameter gets a gradient (nothing dead or detached) by the second step; the nanochat init
    # zeroes the residual output projections, so at step 0 only they (not c_attn, c_fc) get one
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        _, loss = model(idx, torch.randint(0, V, (2, T)))
        loss.backward()
        opt.step()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_mlp_sees_exactly_n_ctx_tokens():
    model = make("mlp-direct")  # n_ctx = 3
    idx = torch.randint(0, V, (1, T))
    changed = idx.clone()
    changed[0, 5] = (changed[0, 5] + 1) % V
    a, _ = model(idx)
    b, _ = model(changed)
    assert not torch.allclose(a[0, 7], b[0, 7])  # token 5 is 2 back from 7: seen
    assert torch.equal(a[0, 8:], b[0, 8:])  # 3 or more back: not seen


def test_mlp_matches_bengio_equation():
    # logits_t = b + W x + U tanh(d + H x), x = [C(w_t), C(w_{t-1}), C(w_{t-2})], BLANK before the start
    model = make("mlp-direct")
    idx = torch.randint(0, V, (1, T))
    logits, _ = model(idx)
    C = model.wte.weight
    H, d = model.hidden.weight, model.hidden.bias
    UW, b = model.lm_head.weight, model.lm_head.bias
    for t in (0, 1, 7):
        ctx = [idx[0, t - k].item() if t - k >= 0 else V for k in range(3)]
        x = torch.cat([C[i] for i in ctx])
        h = torch.tanh(d + H @ x)
        U, W = UW[:, :32], UW[:, 32:]
        assert torch.allclose(logits[0, t], b + W @ x + U @ h, atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_init_is_deterministic_under_seed(name):
    a, b = make(name, seed=3), make(name, seed=3)
    for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(pa, pb), ka
    c = make(name, seed=4)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


@pytest.mark.parametrize("name", CASES)
def test_param_counts(name):
    model = make(name)
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert model.num_params() == sum(unique.values())
    assert sum(model.param_counts().values()) == model.num_params()
    assert 0 < model.num_params(exclude_embeddings=True) <= model.num_params()


@pytest.mark.parametrize("name", ["mlp", "mlp-direct", "modern", "modern-gqa-tied", "gpt2"])
def test_flops_per_token_matches_torch_flop_counter(name):
    # measured: torch counts the matmul FLOPs of a forward + backward pass at T = block_size; the
    # PaLM formula adds 6 per bias / norm parameter on top, which torch does not count as matmuls
    model = make(name)
    idx = torch.randint(0, V, (2, T))
    # the math SDPA backend runs attention as plain matmuls, which the counter sees (the CPU flash
    # kernel is not counted); it computes the full T x T scores, as the PaLM term assumes
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(idx, torch.randint(0, V, (2, T)))
        loss.backward()
    measured = counter.get_total_flops() / idx.numel()
    extra = 6 * sum(p.numel() for n, p in model.named_parameters() if p.ndim == 1)
    assert model.flops_per_token() - extra == pytest.approx(measured, rel=1e-9)


def test_gpt2_small_size():
    # GPT-2 small as released: 124,439,808 parameters (HF gpt2, nanoGPT "124M")
    with torch.device("meta"):
        model = build_model("gpt", 50257, 1024, preset="gpt2")
    assert model.num_params() == 124_439_808
    assert model.num_params(exclude_embeddings=True) == 124_439_808 - 1024 * 768
    assert model.flops_per_token() == 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024


@pytest.mark.parametrize("name", CASES)
def test_model_config_round_trip(name):
    model = make(name)
    d = json.loads(json.dumps(model_config(model)))
    assert d["arch"] == CASES[name][0]
    rebuilt = model_from_config(d)
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    assert model_config(rebuilt) == d
    rebuilt.load_state_dict(model.state_dict())
    idx = torch.randint(0, V, (2, T))
    assert torch.equal(rebuilt(idx)[0], model(idx)[0])


@pytest.mark.parametrize("arch, config, match", [
    ("transformer", {}, "unknown model arch"),
    ("gpt", dict(preset="gpt3"), "unknown GPT preset"),
    ("gpt", dict(n_layers=2), "unknown key 'n_layers'; did you mean 'n_layer'"),
    ("gpt", dict(n_embd=30, n_head=4), "divisible by n_head"),
    ("gpt", dict(n_embd=32, n_head=4, n_kv_head=3), "divisible by n_kv_head"),
    ("gpt", dict(mlp="geglu"), "mlp='geglu': expected one of gelu, relu2, swiglu"),
    ("gpt", dict(depth=0), "depth must be"),
    ("mlp", dict(preset="gpt2"), "mlp config: unknown key 'preset'"),
    ("lstm", dict(n_layer=0), "n_layer=0: expected an integer >= 1"),
    ("gpt", dict(norm_eps=float("nan")), "norm_eps=nan: expected a finite number > 0"),
    ("gpt", dict(dropout=1.0), "dropout=1.0: expected a finite number >= 0 and < 1"),
    ("gpt", dict(n_embd=10**12), "n_embd=1000000000000: expected an integer >= 1 and <= 65536"),
])
def test_user_errors(arch, config, match):
    with pytest.raises(UserError, match=match):
        build_model(arch, V, T, **config)


def test_model_from_config_rejects_bad_dicts():
    with pytest.raises(UserError, match="unknown arch"):
        model_from_config({"vocab_size": 3, "block_size": 4})
    with pytest.raises(UserError, match="bigram config: unknown key 'n_embd'"):
        model_from_config({"arch": "bigram", "vocab_size": 3, "block_size": 4, "n_embd": 5})


def test_ignore_index_matches_torch():
    # the convention (-1 = masked) is torch's ignore_index=-1, per token mean over the kept ones
    model = make("bigram")
    idx = torch.randint(0, V, (2, T))
    targets = torch.randint(0, V, (2, T))
    targets[:, ::2] = -1
    logits, loss = model(idx, targets)
    ref = F.nll_loss(logits.log_softmax(-1).view(-1, V), targets.view(-1), ignore_index=-1)
    assert torch.allclose(loss, ref)
