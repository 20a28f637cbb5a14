"""MLP language model of Bengio, Ducharme, Vincent & Jauvin (2003), "A Neural Probabilistic Language Model".

Each position t sees its n_ctx most recent tokens (t, t-1, ..., t-n_ctx+1), looks up a learned
feature vector for each (the shared matrix C of the paper, here wte), concatenates them into x,
and predicts the next token:

    logits = b + W x + U tanh(d + H x)          (paper, eq. 1; W x are the optional direct connections)

Positions before the start of the sequence read a learned BLANK token (index vocab_size), as in
Karpathy's makemore. The direct connections are folded into the output layer: lm_head reads
[tanh(d + H x) | x], so lm_head.weight = [U | W] and lm_head.bias = b.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.config import check, setting


@dataclass
class MLPConfig:
    """vocab_size: tokens in the vocabulary. block_size: context used when sampling (the model itself
    reads only the last n_ctx tokens of it). n_ctx: tokens the model conditions on (the paper's n - 1).
    n_embd: feature vector size per token (the paper's m). n_hidden: tanh hidden units (h).
    direct: direct connections W from the features to the logits."""

    vocab_size: int = setting(256, "tokens in the vocabulary", ge=1, le=1 << 24)
    block_size: int = setting(256, "context used when sampling", ge=1, le=1 << 20)
    n_ctx: int = setting(8, "tokens the model conditions on (n - 1)", ge=1, le=4096)
    n_embd: int = setting(64, "feature vector size per token (m)", ge=1, le=1 << 16)
    n_hidden: int = setting(512, "tanh hidden units (h)", ge=1, le=1 << 18)
    direct: bool = setting(False, "direct connections from the features to the logits")

    def __post_init__(self):
        check(self, "mlp config")


class MLP(nn.Module):
    """Bengio et al. (2003) feed-forward n-gram model, applied at every position.

    forward(idx: LongTensor (B, T), targets: LongTensor (B, T) | None = None)
      -> (logits: float32 (B, T, V), loss: scalar tensor | None)
    loss: mean cross-entropy in nats per token over targets != -1.

    Modules: wte (nn.Embedding (V + 1) x n_embd; the last row is BLANK), hidden (nn.Linear
    n_ctx * n_embd -> n_hidden), lm_head (nn.Linear n_hidden [+ n_ctx * n_embd if direct] -> V, with bias).
    """

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        n_in = config.n_ctx * config.n_embd
        self.wte = nn.Embedding(config.vocab_size + 1, config.n_embd)  # + BLANK
        self.hidden = nn.Linear(n_in, config.n_hidden)
        self.lm_head = nn.Linear(config.n_hidden + (n_in if config.direct else 0), config.vocab_size)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """wte N(0, 1); hidden N(0, 1/fan_in) (unit-variance pre-activations), bias 0; lm_head
        N(0, 0.01/fan_in) (logit std ~0.1, so the step-0 loss is ~ln V), bias 0. Deterministic under
        torch.manual_seed."""
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.hidden.weight, std=1.0 / math.sqrt(self.hidden.in_features))
        nn.init.zeros_(self.hidden.bias)
        nn.init.normal_(self.lm_head.weight, std=0.1 / math.sqrt(self.lm_head.in_features))
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        blank = self.config.vocab_size
        feats, ctx = [], idx
        for _ in range(self.config.n_ctx):
            feats.append(self.wte(ctx))  # (B, T, m): the token k steps back at every position
            ctx = F.pad(ctx[:, :-1], (1, 0), value=blank)  # shift right by one, BLANK enters on the left
        x = torch.cat(feats, dim=-1)  # (B, T, n_ctx * m)
        h = torch.tanh(self.hidden(x))  # (B, T, n_hidden)
        if self.config.direct:
            h = torch.cat([h, x], dim=-1)  # (B, T, n_hidden + n_ctx * m)
        logits = self.lm_head(h).float()  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-1)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """All parameters; exclude_embeddings=True leaves out the wte lookup table (no matmul)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if exclude_embeddings else n

    def param_counts(self) -> dict[str, int]:
        """Parameters by component; values sum to num_params()."""
        count = lambda m: sum(p.numel() for p in m.parameters())
        return {"token features (wte)": count(self.wte), "tanh hidden": count(self.hidden),
                "lm_head" + (" (+ direct)" if self.config.direct else ""): count(self.lm_head)}

    def flops_per_token(self) -> int:
        """6 N, N = num_params(exclude_embeddings=True) (PaLM appendix B; no attention term)."""
        return 6 * self.num_params(exclude_embeddings=True)
