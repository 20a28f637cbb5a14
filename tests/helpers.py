"""Helpers shared by the test modules (pytest puts this folder on sys.path)."""

import torch


def randomize(model, seed: int = 0):
    """Every weight random and non-zero, in eval mode: norms/biases left at 1 and 0 would hide a swapped
    or dropped parameter, and the nanochat init zeroes the residual projections, which would hide the
    attention path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if p.ndim == 1 else 0.3 * noise)
    return model.eval()
