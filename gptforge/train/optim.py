"""Optimizers and the learning-rate schedule.

``adamw``: one ``torch.optim.AdamW``; weight decay on weights with >= 2 dimensions (matrices and
embeddings), none on biases, norms and scalars (nanoGPT's rule).

``muon``: ``torch.optim.Muon`` for the hidden 2-D weight matrices (attention, MLP, recurrent
weights), and AdamW for what Muon is not meant for: embeddings (``nn.Embedding``), the output
head (the module named ``lm_head``), biases, norms and other < 2-D parameters. With tied
embedding/head weights the shared tensor is optimised once, by AdamW.

Frozen parameters (``requires_grad`` False) are in no group and get no optimizer state. A LoRA run
(``cfg.lora``) trains only its adapters, with AdamW whatever ``optimizer`` says: LoRA's scale
(alpha / r) and learning rates were set with Adam (Hu et al. 2021), and Muon's shape rule would give
the (out, r) factor B sqrt(out / r) times the lr (about 17x for c_attn at r = 8) and orthogonalise
each rank-r factor on its own, not their product B A, the update that matters.

The schedule is a multiplier on each group's peak lr (``group["peak_lr"]``), a function of the
step only, so a resumed run follows the same curve.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gptforge.train.config import TrainConfig


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """Partition the trainable parameters into (hidden matrices, embedding/head weights, the rest).

    Hidden matrices: 2-D weights of modules other than ``nn.Embedding`` and ``lm_head``.
    Embedding/head: parameters of ``nn.Embedding`` modules and of ``lm_head`` with >= 2 dims.
    Rest: everything else (biases, norm gains, scalars). Shared parameters appear once.
    """
    hidden, embed_head, rest, seen = [], [], [], set()
    for name, module in model.named_modules():
        is_io = isinstance(module, nn.Embedding) or name.split(".")[-1] == "lm_head"
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if p.dim() == 2 and not is_io:
                hidden.append(p)
            elif p.dim() >= 2:  # embeddings, the head, and e.g. a conv kernel (not a matrix to orthogonalise)
                embed_head.append(p)
            else:
                rest.append(p)
    return hidden, embed_head, rest


def newton_schulz(G: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
                  ) -> torch.Tensor:
    """Orthogonalise a 2-D update (Jordan et al., Muon; the quintic Newton-Schulz iteration of
    ``torch.optim.Muon``), in float32. G: (m, n) float32; returns (m, n) float32, roughly U V^T of
    G's SVD with singular values in about [0.5, 1.5]."""
    a, b, c = coefficients
    X = G.float()
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T
    X = X / X.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.T  # (m, m) with m <= n
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X.T if tall else X


class MuonFloat32(torch.optim.Muon):
    """``torch.optim.Muon`` with its Newton-Schulz iteration in float32 instead of bfloat16.

    torch casts the update to bfloat16 for that iteration, which is right on GPUs and fast on
    CPUs with native bf16 matmuls, but a CPU without them (AVX2, AVX-512 without BF16) emulates
    them, and the optimizer step then costs many times the forward and backward pass
    (bench/README.md, muon_cpu.py). Same hyperparameters, same state
    (``momentum_buffer``), so checkpoints move between the two; the update is the same up to
    bf16 rounding (tested against torch's).
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p, g, buf in zip(params, grads, bufs, strict=True):
                buf.lerp_(g, 1 - mu)
                update = g.lerp(buf, mu) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - lr * wd)
                p.add_(update.to(p.dtype), alpha=-_muon_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


def _muon_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's learning-rate adjustment by matrix shape (its ``_adjust_lr``)."""
    A, B = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, A / B))
    return lr * 0.2 * math.sqrt(max(A, B))  # "match_rms_adamw"


def build_optimizers(model: nn.Module, cfg: TrainConfig,
                     device_type: str = "cpu") -> list[torch.optim.Optimizer]:
    """The optimizers of ``cfg.optimizer`` for ``model`` (one or two; step them all each step).

    Each param group records its peak learning rate in ``group["peak_lr"]``.
    """
    hidden, embed_head, rest = split_params(model)
    betas = (cfg.beta1, cfg.beta2)
    fused = device_type == "cuda" or None  # fused AdamW kernel on CUDA; torch's default elsewhere
    decayed = embed_head  # AdamW's matrices (weight decay); Muon takes the hidden ones
    if cfg.optimizer == "adamw" or cfg.lora:  # LoRA: only the adapters train, with AdamW (see above)
        hidden, decayed = [], hidden + embed_head
    groups = [{"params": ps, "weight_decay": wd, "peak_lr": cfg.lr}
              for ps, wd in ((decayed, cfg.weight_decay), (rest, 0.0)) if ps]
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=fused)]
    if hidden:
        cls = torch.optim.Muon if device_type == "cuda" else MuonFloat32
        muon = cls(hidden, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                   nesterov=True)
        muon.param_groups[0]["peak_lr"] = cfg.muon_lr
        opts.append(muon)
    return opts


def schedule_steps(cfg: TrainConfig, tokens_per_step: int) -> int:
    """The schedule's horizon in optimizer steps: ``decay_steps`` if set, else ``budget_steps``."""
    return cfg.decay_steps or budget_steps(cfg, tokens_per_step)


def budget_steps(cfg: TrainConfig, tokens_per_step: int) -> int:
    """The run's step budget: ``max_steps``, or fewer when ``max_tokens`` ends the run first."""
    return min(cfg.max_steps, -(-cfg.max_tokens // tokens_per_step)) if cfg.max_tokens else cfg.max_steps


def lr_multiplier(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Multiplier on the peak lr for optimizer step ``step`` (0-based) of ``total_steps``.

    Warmup: linear from 1/(warmup+1) to 1 over ``warmup_steps``. Then ``cosine``: half a cosine
    from 1 down to ``min_lr_frac`` at ``total_steps``; or ``wsd``: 1 until the last
    ``warmdown_frac`` of the steps, then linear down to ``min_lr_frac``. Past the horizon the
    multiplier stays at ``min_lr_frac``.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    lo = cfg.min_lr_frac
    if step >= total_steps:
        return lo
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress))
    start = warmdown_start(cfg, total_steps)
    return 1.0 if step < start else lo + (1 - lo) * (total_steps - step) / (total_steps - start)


def warmdown_start(cfg: TrainConfig, total_steps: int) -> int:
    """wsd: the first step of the linear warmdown, the last ``warmdown_frac`` of ``total_steps``."""
    return total_steps - max(1, round(cfg.warmdown_frac * total_steps))


# The last plan is made when the warmdown begins; its steps (warmdown_frac of them) may still run
# slower than measured (a 100 s run's last 50 were 5% slower, bench/README.md): plan for 3% more.
REPLAN_MARGIN = 1.03


def replannable(cfg: TrainConfig) -> bool:
    """Whether ``schedule_time`` can re-plan this schedule: wsd (flat until its warmdown) without a
    fixed horizon (decay_steps)."""
    return cfg.schedule == "wsd" and not cfg.decay_steps


def replan_steps(step: int, total_steps: int, cfg: TrainConfig, train_time_s: float, step_s: float) -> int:
    """The step count that fills ``cfg.schedule_time`` seconds of optimizer steps: ``step`` steps
    done in ``train_time_s`` seconds, the rest at ``step_s`` seconds each times REPLAN_MARGIN (at
    least one more step).

    ``total_steps`` stays as it is without a time schedule and once its warmdown has begun, so the
    lr never jumps: a wsd lr is flat until then, and moving the horizon only moves the warmdown.
    A short probe predicts a CPU's sustained step time only roughly (bench/README.md); measuring
    while training puts the budget's end where the warmdown ends.
    """
    if not cfg.schedule_time or step >= warmdown_start(cfg, total_steps):
        return total_steps
    return step + max(1, int((cfg.schedule_time - train_time_s) / (step_s * REPLAN_MARGIN)))


REPLAN_AFTER = 10  # step times measured in this session before schedule_time re-plans


def replan(cfg: TrainConfig, step: int, total_steps: int, train_time_s: float,
           step_times: list[float]) -> int:
    """The schedule's length before optimizer ``step`` (``replan_steps``), from the mean of this
    session's latest step times (seconds; the last 50, the first 2 left out) once REPLAN_AFTER are
    measured, or, in a plan too short for that, a quarter of its steps (the first ones counted:
    pessimistic, so it ends in time). ``total_steps`` until then, and without ``schedule_time``."""
    if not cfg.schedule_time or len(step_times) < min(REPLAN_AFTER, max(1, total_steps // 4)):
        return total_steps
    recent = step_times[max(2 if len(step_times) >= REPLAN_AFTER else 0, len(step_times) - 50):]
    return replan_steps(step, total_steps, cfg, train_time_s, sum(recent) / len(recent))


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    """Set every group's lr to its ``peak_lr`` times ``multiplier``."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["peak_lr"] * multiplier
