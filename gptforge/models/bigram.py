"""Bigram language model: the next token depends only on the current one, through a V x V table.

The simplest model on the common interface (Shannon 1948, "A Mathematical Theory of Communication",
the digram approximation; Karpathy, makemore / "Let's build GPT": the bigram baseline). Row i of the
table holds the logits of the token that follows token i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.config import check, setting


@dataclass
class BigramConfig:
    """vocab_size: tokens in the vocabulary. block_size: context used when sampling (the model itself
    looks at one token, so any length works)."""

    vocab_size: int = setting(256, "tokens in the vocabulary", ge=1, le=1 << 20)
    block_size: int = setting(256, "context used when sampling", ge=1, le=1 << 20)

    def __post_init__(self):
        check(self, "bigram config")


class Bigram(nn.Module):
    """logits[b, t] = table[idx[b, t]].

    forward(idx: LongTensor (B, T), targets: LongTensor (B, T) | None = None)
      -> (logits: float32 (B, T, V), loss: scalar tensor | None)
    loss: mean cross-entropy in nats per token over targets != -1.

    The one parameter is ``wte`` (nn.Embedding V x V), the logit table. It is both the input lookup
    and the output layer, so this model has no separate ``lm_head``. Init N(0, 0.02): near-uniform
    predictions, loss ln(V) at step 0.
    """

    def __init__(self, config: BigramConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.vocab_size)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Table ~ N(0, 0.02); deterministic under torch.manual_seed."""
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.wte(idx).float()  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-1)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """V * V. The table is the output layer as well as a lookup, so exclude_embeddings keeps it."""
        return self.wte.weight.numel()

    def param_counts(self) -> dict[str, int]:
        """Parameters by component; values sum to num_params()."""
        return {"logit table (wte)": self.wte.weight.numel()}

    def flops_per_token(self) -> int:
        """6 N with N = V^2: the lookup is one-hot(idx) @ table, the output layer's matmul (PaLM app. B
        convention; the actual row gather is far cheaper)."""
        return 6 * self.num_params()
