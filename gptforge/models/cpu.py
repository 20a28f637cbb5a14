"""A faster CPU kernel for the models' Dropout layers, swapped in on request:

    use_cpu_kernels(model)   # every nn.Dropout becomes Dropout

Same parameters, state dict and distribution of masks; it falls back to torch's own kernel off the
CPU and in evaluation. The trainer swaps it in for every run; measurements in bench/README.md
(dropout.py). A one-row Linear for decoding (two half-weight products in one ``bmm``) lived here
until it measured slower than F.linear (bench/README.md, generate.py); the engine uses torch's.
"""

from __future__ import annotations

import torch
import torch.nn as nn


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
    """Swap ``Dropout`` in for every plain nn.Dropout of ``model``, in place (it adds no state, so
    the change is just the class); returns ``model``."""
    for m in model.modules():
        if type(m) is nn.Dropout:
            m.__class__ = Dropout
    return model
