"""LSTM language model, char-rnn style (Karpathy 2015, "The Unreasonable Effectiveness of Recurrent
Neural Networks"; LSTM: Hochreiter & Schmidhuber 1997; torch.nn.LSTM).

    idx (B, T) -> wte (B, T, n_embd) -> n_layer stacked LSTM (B, T, n_hidden) -> lm_head -> logits (B, T, V)

Every forward pass starts from a zero state, so a training window of block_size tokens is also the
context it conditions on (truncated backpropagation through time with no carried state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.config import check, setting


@dataclass
class LSTMConfig:
    """vocab_size: tokens in the vocabulary. block_size: context used when sampling. n_embd: input
    embedding size. n_hidden: LSTM state size per layer. n_layer: stacked LSTM layers. dropout: between
    LSTM layers and before lm_head (training only)."""

    vocab_size: int = setting(256, "tokens in the vocabulary", ge=1, le=1 << 24)
    block_size: int = setting(256, "context used when sampling", ge=1, le=1 << 20)
    n_embd: int = setting(64, "input embedding size", ge=1, le=1 << 16)
    n_hidden: int = setting(512, "LSTM state size per layer", ge=1, le=1 << 16)
    n_layer: int = setting(2, "stacked LSTM layers", ge=1, le=256)
    dropout: float = setting(0.0, "dropout between layers and before lm_head", ge=0, lt=1)

    def __post_init__(self):
        check(self, "lstm config")


class LSTM(nn.Module):
    """Stacked-LSTM next-token model.

    forward(idx: LongTensor (B, T), targets: LongTensor (B, T) | None = None)
      -> (logits: float32 (B, T, V), loss: scalar tensor | None)
    loss: mean cross-entropy in nats per token over targets != -1.

    Modules: wte (nn.Embedding V x n_embd), rnn (nn.LSTM, batch_first; weight_ih_l{k} (4H, in),
    weight_hh_l{k} (4H, H), gates ordered i, f, g, o), lm_head (nn.Linear H -> V, with bias).
    """

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.rnn = nn.LSTM(config.n_embd, config.n_hidden, num_layers=config.n_layer, batch_first=True,
                           dropout=config.dropout if config.n_layer > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.n_hidden, config.vocab_size)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """wte N(0, 1); LSTM weights U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's default), biases 0 except the
        forget gate's input bias 1 (Jozefowicz et al. 2015); lm_head N(0, 0.01/H), bias 0 (logit std ~0.1,
        step-0 loss ~ln V). Deterministic under torch.manual_seed."""
        H = self.config.n_hidden
        nn.init.normal_(self.wte.weight, std=1.0)
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight"):
                nn.init.uniform_(p, -1.0 / math.sqrt(H), 1.0 / math.sqrt(H))
            else:
                nn.init.zeros_(p)
                if name.startswith("bias_ih"):
                    p[H:2 * H] = 1.0  # forget gate
        nn.init.normal_(self.lm_head.weight, std=0.1 / math.sqrt(H))
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits, _ = self.forward_step(idx)  # from a zero initial state
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-1)

    def forward_step(self, idx: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Continue from a recurrent state: (logits float32 (B, T, V), new state).

        state: (h, c), each (n_layer, B, n_hidden), as returned by the previous call; None starts from
        zeros. The sampling engine carries it between decoding steps instead of re-reading the context.
        """
        h, state = self.rnn(self.wte(idx), state)  # (B, T, n_embd) -> (B, T, H)
        return self.lm_head(self.drop(h)).float(), state  # (B, T, V)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """All parameters; exclude_embeddings=True leaves out the wte lookup table (no matmul)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if exclude_embeddings else n

    def param_counts(self) -> dict[str, int]:
        """Parameters by component; values sum to num_params()."""
        count = lambda m: sum(p.numel() for p in m.parameters())
        return {"token embedding (wte)": count(self.wte), "lstm": count(self.rnn),
                "lm_head": count(self.lm_head)}

    def flops_per_token(self) -> int:
        """6 N, N = num_params(exclude_embeddings=True): each LSTM weight is used once per token
        (PaLM appendix B convention; no attention term)."""
        return 6 * self.num_params(exclude_embeddings=True)
