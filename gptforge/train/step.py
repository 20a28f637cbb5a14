"""One optimizer step: the training loop, SFT, DPO, RL and `gptforge doctor` all take it here."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch


class StepResult(NamedTuple):
    """What ``optimizer_step`` measured: ``loss`` the mean of the micro-batches' losses (0-dim
    float32 tensor, nats per scored token for the LM losses; this process only, not averaged over
    DDP ranks); ``grad_norm`` the total gradient norm before clipping (0-dim tensor; None without
    clipping); ``stats`` each extra statistic the loss_fn returned, averaged the same way."""

    loss: torch.Tensor
    grad_norm: torch.Tensor | None
    stats: dict[str, torch.Tensor]


def optimizer_step(model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                   batch: Callable[[int], object], accum: int, loss_fn: Callable,
                   amp=None, ddp: bool = False, grad_clip: float = 0.0) -> StepResult:
    """Take one optimizer step over ``accum`` micro-batches; return their mean loss, the gradient
    norm and the loss_fn's extra stats (``StepResult``).

    model: what the forward pass calls (plain, compiled or DDP-wrapped); its parameters are clipped.
    optimizers: stepped in order, then all zeroed (``set_to_none``); their lr is set by the caller.
    batch: ``batch(i)`` gives micro-batch ``i`` (0 <= i < accum), called just before its forward
        pass (the curriculum sampler needs the previous micro-batch's losses before it draws).
    loss_fn: ``(model, batch) -> (loss, stats)``, loss a scalar tensor, stats a dict of scalar
        tensors (may be empty; detached here). The gradient is that of the mean loss: each
        micro-batch's loss / accum is backpropagated.
    amp: the autocast context around each forward pass (None: none, float32).
    ddp: ``model`` is DistributedDataParallel: gradients are all-reduced on the last micro-batch
        only (``no_sync`` on the others), which averages them over ranks.
    grad_clip: clip the total gradient norm to this (0: no clipping, ``grad_norm`` None).

    Raises whatever the loss_fn or the optimizers raise; a non-finite loss is returned, not raised
    (the training loop raises FloatingPointError on it after averaging over ranks).
    """
    amp = amp or contextlib.nullcontext()
    loss_sum = 0.0
    stat_sums: dict[str, torch.Tensor] = {}
    for i in range(accum):
        with model.no_sync() if ddp and i < accum - 1 else contextlib.nullcontext():
            with amp:
                loss, stats = loss_fn(model, batch(i))
            (loss / accum).backward()
        loss_sum = loss_sum + loss.detach().float()
        for k, v in stats.items():
            stat_sums[k] = stat_sums.get(k, 0.0) + v.detach().float()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
    for opt in optimizers:  # they hold disjoint parameters (optim.build_optimizers)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return StepResult(loss_sum / accum, grad_norm, {k: v / accum for k, v in stat_sums.items()})
