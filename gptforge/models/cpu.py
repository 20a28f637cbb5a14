"""Faster CPU kernels for the models' Linear and Dropout layers, swapped in on request:

    use_cpu_kernels(model)   # every nn.Linear becomes Linear, every nn.Dropout becomes Dropout

Same parameters, state dict and results (up to float rounding in Linear's sums); each falls back to
torch's own kernel off the CPU, with autograd (Linear) or in evaluation (Dropout). The engine swaps
them in for a model on the CPU (gptforge.engine.Slots), the trainer for every run; measurements in
bench/README.md (generate.py, dropout.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

SKINNY_ROWS = 64  # at most this many rows (B * T) take Linear's decode path


class Linear(nn.Linear):
    """nn.Linear, faster on the CPU for the few rows of a decode step. (..., in) -> (..., out).

    Training, autograd, other devices and dtypes, and inputs of more than SKINNY_ROWS rows run
    ``F.linear`` unchanged. For M <= SKINNY_ROWS fp32 rows on the CPU without autograd, MKL's sgemm
    as F.linear calls it is slow: it runs one row on one thread and a few rows far below the
    memory bandwidth. The same product taken as ``weight @ x.T`` (M > 1), or for one row as two
    half-weight products in one ``bmm`` (both threads), is faster (bench/README.md, generate.py).
    The sums are the same but the order of their float additions can differ from F.linear's in
    the last bits.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.size(-1)
        if (rows > SKINNY_ROWS or x.device.type != "cpu" or x.dtype != torch.float32
                or torch.is_grad_enabled()):
            return F.linear(x, self.weight, self.bias)
        W = self.weight  # (N, K)
        N, K = W.shape
        x2 = x.reshape(rows, K)  # (M, K)
        if rows == 1 and N % 2 == 0:
            y = torch.bmm(W.reshape(2, N // 2, K), x2.t().expand(2, K, 1)).view(1, N)  # (2, N/2, 1) -> (1, N)
            if self.bias is not None:
                y = y + self.bias
        elif self.bias is not None:
            y = torch.addmm(self.bias[:, None], W, x2.t()).t().contiguous()  # (N, M) -> (M, N)
        else:
            y = torch.mm(W, x2.t()).t().contiguous()
        return y.view(*x.shape[:-1], N)


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper random mask on the CPU. (...) -> (...), same shape and dtype.

    In training each element is zeroed with probability p and the rest scaled by 1 / (1 - p)
    (Srivastava et al. 2014). torch's CPU dropout draws a random number per element; here one
    64-bit draw gives four elements 15 random bits each (random_ fills 63 uniform bits; the sign bit
    of each 16-bit piece is masked off), so p is rounded to a multiple of 1/32768: cheaper than
    torch's (bench/README.md, dropout.py). Other devices (CUDA's
    dropout is fused) and evaluation run nn.Dropout unchanged. The masks come from torch's CPU
    generator, so ``torch.manual_seed`` and a saved RNG state reproduce them.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # 63 uniform bits each
        bits = bits.view(torch.int16)[:n].view(x.shape) & 0x7FFF  # (...) uniform in [0, 32768)
        scale = (bits >= round(self.p * 32768)).to(x.dtype).mul_(1 / (1 - self.p))  # 0 or 1 / (1 - p)
        return x * scale


def use_cpu_kernels(model: nn.Module) -> nn.Module:
    """Swap ``Linear`` and ``Dropout`` in for every plain nn.Linear / nn.Dropout of ``model``, in
    place (they add no state, so the change is just the class); returns ``model``."""
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = Linear
        elif type(m) is nn.Dropout:
            m.__class__ = Dropout
    return model
