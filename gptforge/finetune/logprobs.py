"""Log-probabilities of given tokens under a model, and means over the scored ones: the pieces SFT,
DPO and RL share (a policy's log-probabilities with gradients, a frozen reference's without).

Targets use the loop's convention: ``y`` (B, T) int64 token ids, -1 where a position is not scored
(prompt, user text, tool output, padding).
"""

from __future__ import annotations

import torch


def token_logprobs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y_t | x_<=t) of every target: (B, T) float32 nats, 0 where y == -1.

    x, y: int64 (B, T) inputs and targets. Gradients flow to the model unless called under
    ``torch.no_grad()`` (a frozen reference).
    """
    logits, _ = model(x)  # (B, T, V)
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked * (y != -1)


def sequence_logprobs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of ``token_logprobs`` over each row's scored targets: (B,) float32 nats."""
    return token_logprobs(model, x, y).sum(dim=1)


def masked_mean(values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, T) over the scored positions (y != -1) of the whole batch, a 0-dim
    tensor (0 when none is scored): a per-token normalisation, so long replies weigh per token, not
    per reply (as DAPO and nanochat's RL normalise)."""
    mask = y != -1
    return (values * mask).sum() / mask.sum().clamp(min=1)
