"""GPT: a decoder-only Transformer, from exact OpenAI GPT-2 to the modern nanochat recipe.

One configurable model, read top to bottom like nanoGPT's model.py:

    idx (B, T) -> wte [+ wpe] -> [norm] -> n_layer x Block -> norm -> lm_head -> [softcap] -> logits (B, T, V)
    Block: x = x + attn(norm(x)); x = x + mlp(norm(x))          (pre-norm residual)

Two named presets (see `gpt_config`):

- ``gpt2``: exactly OpenAI GPT-2 (learned positions, LayerNorm with bias, tanh-GELU MLP, biases,
  tied embeddings). Weights move to and from Hugging Face ``GPT2LMHeadModel`` (gptforge.models.hf).
- ``modern``: RoPE, parameter-free RMSNorm (also right after the embedding), ReLU^2 MLP, QK-norm,
  untied embeddings, no biases, logit softcap 15: the recipe modded-nanogpt and nanochat found
  fastest. Exports to Hugging Face ``NanoChatForCausalLM``.

References: Vaswani et al. 2017 (the Transformer); Radford et al. 2018 (GPT); Radford et al. 2019 (GPT-2;
openai/gpt-2 src/model.py); Karpathy, nanoGPT model.py and
nanochat gpt.py; Jordan et al., modded-nanogpt; Su et al. 2021 (RoPE); Zhang & Sennrich 2019
(RMSNorm); So et al. 2021 (Primer, ReLU^2); Shazeer 2020 (SwiGLU); Henry et al. 2020 / Dehghani et
al. 2023 (QK-norm); Gemma 2 team 2024 (logit softcap); Ainslie et al. 2023 (GQA); Chowdhery et al.
2022, PaLM appendix B (FLOPs per token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.config import check, convert, setting
from gptforge.errors import UserError
from gptforge.models import PRESETS  # the preset names live in the package, torch-free

POSITIONALS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2", "swiglu")
INITS = ("gpt2", "nanochat")


@dataclass
class GPTConfig:
    """Every architectural choice of `GPT`. Fields left at None are resolved in ``__post_init__``.

    vocab_size, block_size: tokens in the vocabulary; longest sequence (positions) the model sees.
    n_layer, n_head, n_embd: Transformer blocks; query heads; residual width C (head_dim = C / n_head).
    n_kv_head: key/value heads (GQA, Ainslie et al. 2023); None -> n_head (plain multi-head attention),
        1 -> multi-query attention. Must divide n_head.
    mlp_hidden: MLP hidden width; None -> 4 * n_embd (gelu, relu2) or 8/3 * n_embd rounded up to a
        multiple of 64 (swiglu, which has two input matrices).
    positional: "learned" (absolute position table wpe, GPT-2) | "rope" (rotary, Su et al. 2021).
    rope_theta: RoPE base frequency.
    norm: "layernorm" (learned scale, and shift iff bias) | "rmsnorm" (parameter-free).
    norm_eps: epsilon of every norm (GPT-2: 1e-5; nanochat / HF NanoChat: 1e-6).
    embd_norm: normalise the embedding before the first block (nanochat does).
    mlp: "gelu" (tanh approximation, GPT-2's gelu_new) | "relu2" (ReLU squared) | "swiglu".
    qk_norm: parameter-free RMSNorm on queries and keys per head, after RoPE (nanochat's order).
    tie_embeddings: lm_head shares its weight matrix with wte (GPT-2 does).
    bias: biases in every Linear except lm_head, and in LayerNorm.
    dropout: on the embeddings and on each residual branch (training only). Not on the attention
        probabilities: on the CPU that takes SDPA off its fused kernel, 2.4x the attention's
        forward and backward time (bench/dropout.py).
    logit_softcap: logits = cap * tanh(logits / cap); None -> off.
    init: weight-init scheme, "gpt2" (N(0, 0.02), residual projections / sqrt(2 n_layer)) or "nanochat"
        (see `GPT.init_weights`).
    """

    # sizes are capped where a typo would otherwise try to allocate terabytes
    vocab_size: int = setting(50304, "tokens in the vocabulary", ge=1, le=1 << 24)
    block_size: int = setting(1024, "context length T in tokens (positions)", ge=1, le=1 << 20)
    n_layer: int = setting(12, "Transformer blocks", ge=1, le=1024)
    n_head: int = setting(6, "query heads", ge=1, le=1024)
    n_kv_head: int | None = setting(None, "key/value heads (GQA); none -> n_head", ge=1, le=1024)
    n_embd: int = setting(768, "residual width C", ge=1, le=1 << 16)
    mlp_hidden: int | None = setting(None, "MLP hidden width; none -> 4 C (8/3 C for swiglu)", ge=1,
                                     le=1 << 18)
    positional: str = setting("rope", "position encoding", choices=POSITIONALS)
    rope_theta: float = setting(10000.0, "RoPE base frequency", gt=0)
    norm: str = setting("rmsnorm", "normalisation", choices=NORMS)
    norm_eps: float = setting(1e-6, "epsilon of every norm", gt=0, lt=1)
    embd_norm: bool = setting(True, "normalise the embedding before the first block")
    mlp: str = setting("relu2", "MLP activation", choices=MLPS)
    qk_norm: bool = setting(True, "RMSNorm on queries and keys")
    tie_embeddings: bool = setting(False, "lm_head shares wte's weights")
    bias: bool = setting(False, "biases in Linear layers and LayerNorm")
    dropout: float = setting(0.0, "dropout probability (training only)", ge=0, lt=1)
    logit_softcap: float | None = setting(15.0, "logits = cap * tanh(logits / cap); none -> off", gt=0)
    init: str = setting("nanochat", "weight-init scheme", choices=INITS)

    def __post_init__(self):
        check(self, "GPT config")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.mlp_hidden is None:
            self.mlp_hidden = 4 * self.n_embd if self.mlp != "swiglu" else -(-8 * self.n_embd // 3 // 64) * 64
        if self.n_embd % self.n_head:
            raise UserError(f"GPT n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise UserError(f"GPT n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.positional == "rope" and self.head_dim % 2:
            raise UserError(f"RoPE needs an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        """Channels per attention head, n_embd // n_head."""
        return self.n_embd // self.n_head


def gpt_config(preset: str = "modern", depth: int | None = None, **overrides) -> GPTConfig:
    """A `GPTConfig` from a named preset, one size dial and explicit field overrides.

    preset: "gpt2" (exact OpenAI GPT-2) or "modern" (nanochat / modded-nanogpt recipe).
    depth: n_layer; width and heads follow from it (default 12, i.e. GPT-2 small / nanochat d12):
        gpt2:   n_embd = 64 * depth, head_dim 64, so n_head = depth. depth 12 -> 768 wide, 12 heads,
                exactly GPT-2 small (124M at vocab 50257). GPT-2 medium/large/xl are not on this
                dial (they have 1024/1280/1600 wide, 16/20/25 heads): give n_layer/n_embd/n_head.
        modern: nanochat's aspect ratio 64: n_embd = 64 * depth rounded up to a multiple of
                head_dim 128, n_head = n_embd / 128. depth 12 -> 768/6 heads, 20 -> 1280/10, 32 -> 2048/16.
    overrides: any GPTConfig field. If n_embd is overridden but n_head is not, n_head is
        max(1, n_embd // head_dim) with the preset's head_dim (64 or 128).
    Unknown preset or field -> UserError.
    """
    if preset not in PRESETS:
        raise UserError(f"unknown GPT preset {preset!r}; choose one of {', '.join(PRESETS)}")
    overrides = {k: convert(GPTConfig, k, v, "GPT config") for k, v in overrides.items()}
    if depth is None:
        depth = overrides.get("n_layer", 12)
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 1024:
        raise UserError(f"depth must be an integer in [1, 1024], not {depth!r}")
    if preset == "gpt2":
        head_dim = 64
        base = dict(vocab_size=50257, block_size=1024, n_embd=64 * depth, positional="learned",
                    norm="layernorm", norm_eps=1e-5, embd_norm=False, mlp="gelu", qk_norm=False,
                    tie_embeddings=True, bias=True, logit_softcap=None, init="gpt2")
    else:
        head_dim = 128
        base = dict(vocab_size=50304, block_size=2048, n_embd=-(-64 * depth // head_dim) * head_dim,
                    positional="rope", norm="rmsnorm", norm_eps=1e-6, embd_norm=True, mlp="relu2",
                    qk_norm=True, tie_embeddings=False, bias=False, logit_softcap=15.0, init="nanochat")
    base["n_layer"] = depth
    base.update(overrides)
    if "n_head" not in overrides:
        base["n_head"] = max(1, base["n_embd"] // head_dim)
    return GPTConfig(**base)


# ----------------------------------------------------------------------------------------------
# building blocks


class RMSNorm(nn.Module):
    """Parameter-free RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) over the last dim.

    Any shape (..., C) -> same shape and dtype. Matches HF NanoChatRMSNorm and nanochat's norm().
    """

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), eps=self.eps)


def make_norm(config: GPTConfig) -> nn.Module:
    """The residual-stream norm the config asks for: (B, T, C) -> (B, T, C)."""
    if config.norm == "layernorm":
        return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
    return RMSNorm(config.norm_eps)


def rope_cos_sin(T: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for positions 0..T-1: cos, sin, each float32 (T, head_dim / 2).

    Frequency i is theta^(-2i / head_dim) (Su et al. 2021), as in HF NanoChat and Llama.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + hs/2]) of x (B, nh, T, hs) by position; cos, sin (T, hs/2), or
    (B, 1, T, hs/2) when each row has its own positions. Same shape as x.

    Half-split pairing and sign as nanochat and HF NanoChat (x * cos + rotate_half(x) * sin with
    rotate_half(x) = cat(x2, -x1)).
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with fused QKV, optional GQA, RoPE and QK-norm, via SDPA.

    forward(x (B, T, C), cos, sin (T, hs/2) or (B, 1, T, hs/2) or None, kv_cache or None, where) -> (B, T, C);
    with a KV cache (``gptforge.engine.KVCache``), keys and values are written at ``where`` and
    the queries attend to the row's cached keys.
    c_attn: nn.Linear(C, (n_head + 2 n_kv_head) * hs), rows ordered q | k | v (GPT-2's c_attn, transposed).
    """

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qk_norm = RMSNorm(config.norm_eps) if config.qk_norm else None
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_dim,
                             bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos=None, sin=None, kv_cache=None, where=None):
        B, T, C = x.size()
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q), self.qk_norm(k)
        gqa = nkv != nh
        if kv_cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            k, v, mask = kv_cache.update(self.layer_idx, k, v, where)  # (B, nkv, L, hs), L = keys so far
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


class FeedForward(nn.Module):
    """The position-wise MLP: (B, T, C) -> (B, T, C).

    gelu / relu2: c_proj(act(c_fc(x))), c_fc (C -> H). swiglu: c_fc (C -> 2H) gives [a | g],
    then c_proj(a * silu(g)) (Shazeer 2020).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        width = 2 * config.mlp_hidden if config.mlp == "swiglu" else config.mlp_hidden
        self.c_fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)  # (B, T, H) or (B, T, 2H)
        if self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")  # GPT-2's gelu_new
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            a, g = h.chunk(2, dim=-1)
            h = a * F.silu(g)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)). (B, T, C) -> (B, T, C)."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = FeedForward(config)

    def forward(self, x, cos=None, sin=None, kv_cache=None, where=None):
        x = x + self.attn(self.ln_1(x), cos, sin, kv_cache, where)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------------------------
# the model


class GPT(nn.Module):
    """Decoder-only Transformer language model.

    forward(idx: LongTensor (B, T), targets: LongTensor (B, T) | None = None, kv_cache=None, select=None,
            pos=0) -> (logits: float32 (B, T, vocab_size), loss: scalar float32 tensor | None)
    loss: mean cross-entropy in nats per token over targets != -1 (-1 masks a position out).
    select=(rows, cols), two LongTensors (N,): logits only at those positions, float32 (N, vocab_size)
    (log-likelihood scoring: the lm_head over every position dominates with a large vocabulary).
    kv_cache: a ``gptforge.engine.KVCache`` for incremental decoding: idx holds only the new tokens;
    they sit at positions pos.. (pos: an int, or B ints, each row's own) and attend to what the
    cache holds for their row before them; their keys and values are written there. Positions must
    stay below block_size.

    Modules: transformer.wte (nn.Embedding V x C), transformer.wpe (nn.Embedding block_size x C, learned
    positions only), transformer.ln_e (embedding norm, if embd_norm), transformer.h (blocks),
    transformer.ln_f, lm_head (nn.Linear C -> V, no bias; its weight *is* wte's when tied).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        t = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.positional == "learned":
            t["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        t["drop"] = nn.Dropout(config.dropout)
        if config.embd_norm:
            t["ln_e"] = make_norm(config)
        t["h"] = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        t["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(t)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if config.positional == "rope":
            cos, sin = rope_cos_sin(config.block_size, config.head_dim, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter; deterministic under torch.manual_seed.

        "gpt2" (GPT-2 / nanoGPT): Linear and Embedding weights N(0, 0.02), the two residual output
        projections (attn.c_proj, mlp.c_proj) N(0, 0.02 / sqrt(2 n_layer)), biases 0, LayerNorm 1.
        "nanochat": wte N(0, 1) (a norm follows), wpe N(0, 1), lm_head N(0, 0.001) so step-0 logits are
        ~0 and the loss is ln(V); c_attn and mlp.c_fc U(-a, a) with a = sqrt(3 / C) (std 1/sqrt(C));
        attn.c_proj and mlp.c_proj zero, so each block starts as the identity. When tied, the shared
        wte/lm_head matrix gets N(0, 0.001).
        """
        cfg = self.config
        for name, p in self.named_parameters():
            if p.ndim == 1:  # biases and LayerNorm weights
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif cfg.init == "gpt2":
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("c_proj.weight"):
                nn.init.zeros_(p)
            elif name.endswith("c_attn.weight") or name.endswith("c_fc.weight"):
                a = math.sqrt(3.0 / cfg.n_embd)
                nn.init.uniform_(p, -a, a)
            elif name == "lm_head.weight" or (name == "transformer.wte.weight" and cfg.tie_embeddings):
                nn.init.normal_(p, mean=0.0, std=0.001)
            else:  # wte, wpe
                nn.init.normal_(p, mean=0.0, std=1.0)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache=None,
                select: tuple[torch.Tensor, torch.Tensor] | None = None, pos: int | Sequence[int] = 0):
        cfg = self.config
        B, T = idx.size()
        where = kv_cache.where(pos, B, T, idx.device) if kv_cache is not None else None
        positions = torch.arange(T, device=idx.device) if where is None else where.positions  # (T,) or (B, T)
        end = T if where is None else where.end
        if end > cfg.block_size:
            raise ValueError(f"sequence reaches position {end}, beyond block_size {cfg.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        if cfg.positional == "learned":
            x = x + self.transformer.wpe(positions)  # (T, C) broadcast, or (B, T, C)
        x = self.transformer.drop(x)
        if cfg.embd_norm:
            x = self.transformer.ln_e(x)
        cos = sin = None
        if cfg.positional == "rope":
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (T, hs/2) or (B, T, hs/2)
            if positions.dim() == 2:  # ragged rows
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hs/2)
        for block in self.transformer.h:
            x = block(x, cos, sin, kv_cache, where)
        x = self.transformer.ln_f(x)
        if select is not None:
            x = x[select]  # (N, C)
        logits = self.lm_head(x).float()  # (B, T, V), or (N, V) with select
        if cfg.logit_softcap is not None:
            logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-1)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (a tied wte/lm_head matrix counts once).

        exclude_embeddings=True leaves out the input lookup tables, which do no multiply-adds: wpe,
        and wte unless it is tied to lm_head (then it is the output layer's matmul and is kept).
        That is the N of 6N in `flops_per_token`.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    def param_counts(self) -> dict[str, int]:
        """Parameters by component, in forward order; values sum to num_params()."""
        t = self.transformer
        count = lambda mods: sum(p.numel() for m in mods for p in m.parameters())
        blocks = list(t.h)
        norms = [b.ln_1 for b in blocks] + [b.ln_2 for b in blocks] + [t.ln_f]
        if "ln_e" in t:
            norms.append(t.ln_e)
        return {
            "token embedding (wte)": t.wte.weight.numel(),
            "position embedding (wpe)": t.wpe.weight.numel() if "wpe" in t else 0,
            "attention": count([b.attn for b in blocks]),
            "mlp": count([b.mlp for b in blocks]),
            "norms": count(norms),
            "lm_head" + (" (tied to wte)" if self.config.tie_embeddings else ""):
                0 if self.config.tie_embeddings else self.lm_head.weight.numel(),
        }

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward) at sequence length block_size:
        6 N + 12 n_layer n_embd block_size, N = num_params(exclude_embeddings=True) (PaLM, Chowdhery et
        al. 2022, appendix B; the attention term counts the full, unmasked score and value matmuls)."""
        cfg = self.config
        return 6 * self.num_params(exclude_embeddings=True) + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
