"""Muon's optimizer step on the CPU: gptforge's MuonFloat32 (Newton-Schulz in float32) against
torch.optim.Muon (Newton-Schulz in bfloat16), same model, same gradients, in one run.

    .venv/bin/python bench/muon_cpu.py            # the cpu recipe's hidden matrices (4 x 256 wide)

Prints a table on stderr and JSON on stdout: median seconds per optimizer step of each, the
ratio, and the relative difference of the two updates (bf16 rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()

    from gptforge.models import build_model
    from gptforge.train.optim import MuonFloat32, split_params

    torch.manual_seed(0)
    m = build_model("gpt", vocab_size=2048, block_size=128, preset="modern", depth=args.depth,
                    n_embd=args.n_embd, n_head=max(1, args.n_embd // 64))
    hidden, _, _ = split_params(m)
    grads = [torch.randn_like(p) for p in hidden]
    results, updates = {}, {}
    for name, cls in (("torch.optim.Muon (bf16 NS)", torch.optim.Muon), ("MuonFloat32", MuonFloat32)):
        params = [torch.nn.Parameter(p.detach().clone()) for p in hidden]
        opt = cls(params, lr=0.02, weight_decay=0.0, momentum=0.95)
        times = []
        for _ in range(args.steps):
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        results[name] = statistics.median(times)
        updates[name] = torch.cat([(p.detach() - h.detach()).flatten()
                                   for p, h in zip(params, hidden, strict=True)])
    ref, ours = results["torch.optim.Muon (bf16 NS)"], results["MuonFloat32"]
    a, b = updates["torch.optim.Muon (bf16 NS)"], updates["MuonFloat32"]
    diff = float((a - b).norm() / a.norm())
    print(f"{len(hidden)} matrices, {sum(p.numel() for p in hidden):,} parameters, {torch.get_num_threads()} "
          f"threads, cpu capability {torch.backends.cpu.get_cpu_capability()}", file=sys.stderr)
    for name, s in results.items():
        print(f"  {name:28s} {s * 1000:9.1f} ms/step", file=sys.stderr)
    print(f"  speed-up {ref / ours:.1f}x; updates differ by {diff:.2%} (relative norm)", file=sys.stderr)
    print(json.dumps({"torch_muon_s": ref, "muon_float32_s": ours, "speedup": ref / ours,
                      "relative_update_difference": diff,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
