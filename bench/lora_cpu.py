"""LoRA against full SFT on a GPT-2-small-sized model: peak memory and optimizer-step time, one run.

    .venv/bin/python bench/lora_cpu.py [--steps 3] [--batch-size 2] [--block-size 256] [--lora r=8,alpha=16]

The model is the gpt2 preset at depth 12 (GPT-2 small: 124M parameters, vocabulary 50,257) with
random weights; each variant runs in a fresh process (so that its peak resident memory is its own)
and takes one untimed step, then ``--steps`` timed ones, through the trainer's own pieces:
``gptforge.train.optim.build_optimizers`` and ``gptforge.train.step.optimizer_step`` on random tokens.
full: every weight trains (AdamW, as an SFT of an AdamW base); lora: ``gptforge.models.lora.add_lora``
first, so only the adapters train (AdamW on them alone). Prints, per variant: trained parameters,
optimizer state, resident memory after the model is built and at its peak, and the median step
time; then LoRA's ratios to full.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    """This process's resident memory now, MB (VmRSS of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_variant(variant: str, args) -> dict:
    """Build the model, train ``1 + args.steps`` steps of ``variant``; the figures as a dict."""
    import torch

    from gptforge.models import build_model
    from gptforge.train import make_config
    from gptforge.train.batches import lm_loss
    from gptforge.train.optim import build_optimizers
    from gptforge.train.step import optimizer_step

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=50257, block_size=1024, preset="gpt2", depth=12).train()
    built = rss_mb()
    cfg = {"lr": 1e-4, "weight_decay": 0.0, "optimizer": "adamw"}
    if variant == "lora":
        from gptforge.models.lora import add_lora, parse_lora

        add_lora(model, parse_lora(args.lora))
        cfg.update(lora=args.lora, init_from="(random weights)")  # init_from: only the config check reads it
    imported = rss_mb()  # the lora variant's imports: peft brings transformers
    opts = build_optimizers(model, make_config(cfg))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 50257, (args.batch_size, args.block_size), generator=g)
    y = torch.randint(0, 50257, (args.batch_size, args.block_size), generator=g)
    times = []
    for i in range(1 + args.steps):
        t0 = time.perf_counter()
        optimizer_step(model, opts, lambda _: (x, y), 1, lm_loss, grad_clip=1.0)
        if i:  # the first step allocates the optimizer state and warms the allocator
            times.append(time.perf_counter() - t0)
    state = sum(t.numel() * t.element_size() for o in opts for s in o.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim())
    return {"variant": variant, "params": sum(p.numel() for p in model.parameters()),
            "trained_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "optimizer_state_mb": state / 2**20, "rss_built_mb": built, "rss_imports_mb": imported - built,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_s": statistics.median(times), "step_times_s": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one untimed")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora", default="r=8,alpha=16", help="the --lora spec of the lora variant")
    ap.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)  # a child process
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    res = {}
    for variant in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant],
                             capture_output=True, text=True, check=True).stdout
        res[variant] = json.loads(out.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"gpt2 preset, depth 12, B={args.batch_size} T={args.block_size}, {args.threads} threads, "
          f"median of {args.steps} steps after one; lora {args.lora}")
    print(f"{'':<8}{'trained params':>16}{'optimizer MB':>14}{'RSS built MB':>14}{'peak RSS MB':>13}"
          f"{'s/step':>9}")
    for v, r in res.items():
        print(f"{v:<8}{r['trained_params']:>16,}{r['optimizer_state_mb']:>14,.1f}{r['rss_built_mb']:>14,.0f}"
              f"{r['peak_rss_mb']:>13,.0f}{r['step_s']:>9.2f}")
    f, lo = res["full"], res["lora"]
    above = (lo["peak_rss_mb"] - lo["rss_built_mb"]) / (f["peak_rss_mb"] - f["rss_built_mb"])
    print(f"lora / full: peak RSS {lo['peak_rss_mb'] / f['peak_rss_mb']:.2f}x, peak RSS above the built "
          f"model {above:.2f}x, "
          f"step time {lo['step_s'] / f['step_s']:.2f}x; lora's imports (peft, transformers) "
          f"{lo['rss_imports_mb']:,.0f} MB")


if __name__ == "__main__":
    main()
