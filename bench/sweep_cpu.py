"""The sweep behind the `cpu` speedrun recipe: short runs of variants, ranked by val bpb.

    .venv/bin/python bench/sweep_cpu.py --budget 20 [--only NAME ...] [--json out.json]

Every variant trains on tiny shakespeare (nanoGPT's 90/10 split) for the same wall-clock budget of
optimizer steps (the step count is calibrated, so every schedule ends on time) and is scored by bpb
on the whole validation split. Variants are the `cpu` recipe with a few settings changed; the
tokenizer is a BPE of the given vocabulary trained on the training part. Results: bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# The sweep's base, pinned here rather than read from the `cpu` recipe (which the sweep's winners
# and later runs changed): depth 4, n_embd 192 (3 heads of 64), T=128, B=16, Muon (lr 0.02) on the
# hidden matrices and AdamW (lr 3e-3) on the rest, warmup 20 then WSD with a 40% warmdown, no dropout.
BASE = dict(arch="gpt", preset="modern", depth=4, model={"n_embd": 192, "n_head": 3, "dropout": 0.0},
            block_size=128, batch_size=16, optimizer="muon", lr=3e-3, muon_lr=0.02, weight_decay=0.0,
            beta1=0.9, beta2=0.95, grad_clip=1.0, schedule="wsd", warmdown_frac=0.4, min_lr_frac=0.0,
            warmup_steps=20, dtype="float32")
# name -> (bpe vocab, overrides of BASE)
VARIANTS: dict[str, tuple[int, dict]] = {
    "base": (2048, {}),
    "vocab512": (512, {}),
    "vocab1024": (1024, {}),
    "vocab4096": (4096, {}),
    "adamw": (2048, {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1}),
    "adamw-cosine": (2048, {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1, "schedule": "cosine",
                            "min_lr_frac": 0.1}),
    "muon-lr0.04": (2048, {"muon_lr": 0.04}),
    "muon-lr0.01": (2048, {"muon_lr": 0.01}),
    "adam-lr1e-2": (2048, {"lr": 1e-2}),
    "width128": (2048, {"model": {"n_embd": 128, "n_head": 2}}),
    "width256": (2048, {"model": {"n_embd": 256, "n_head": 4}}),
    "depth2": (2048, {"depth": 2}),
    "depth6": (2048, {"depth": 6}),
    "T64": (2048, {"block_size": 64, "batch_size": 32}),
    "T256": (2048, {"block_size": 256, "batch_size": 8}),
    "B8": (2048, {"batch_size": 8}),
    "B32": (2048, {"batch_size": 32}),
    "gpt2-preset": (2048, {"preset": "gpt2", "model": {"n_embd": 192, "n_head": 3, "bias": False}}),
    "threads1": (2048, {"threads": 1}),
    "bf16": (2048, {"dtype": "bfloat16"}),
    "warmdown0.2": (2048, {"warmdown_frac": 0.2}),
    "cosine": (2048, {"schedule": "cosine", "min_lr_frac": 0.1}),
    # combinations of the winners at short budgets
    "d2-B8": (2048, {"depth": 2, "batch_size": 8}),
    "d2-B8-lr1e-2": (2048, {"depth": 2, "batch_size": 8, "lr": 1e-2}),
    "d2-B8-lr1e-2-v1024": (1024, {"depth": 2, "batch_size": 8, "lr": 1e-2}),
    "d2-w128-B8-lr1e-2": (2048, {"depth": 2, "batch_size": 8, "lr": 1e-2,
                                 "model": {"n_embd": 128, "n_head": 2}}),
    "d2-B8-lr1e-2-T64": (2048, {"depth": 2, "batch_size": 16, "block_size": 64, "lr": 1e-2}),
    "d2-B8-lr1e-2-adamw": (2048, {"depth": 2, "batch_size": 8, "lr": 1e-2, "optimizer": "adamw"}),
    # longer budgets: more capacity
    "lr1e-2": (2048, {"lr": 1e-2}),
    "w256-lr1e-2": (2048, {"lr": 1e-2, "model": {"n_embd": 256, "n_head": 4}}),
    "w256-lr1e-2-drop0.1": (2048, {"lr": 1e-2, "model": {"n_embd": 256, "n_head": 4, "dropout": 0.1}}),
    "d6-w256-lr1e-2-drop0.1": (2048, {"depth": 6, "lr": 1e-2, "model": {"n_embd": 256, "n_head": 4,
                                                                        "dropout": 0.1}}),
    # 600 s on tiny shakespeare is 8-14 epochs: regularise
    "lr1e-2-drop0.2": (2048, {"lr": 1e-2, "model": {"dropout": 0.2}}),
    "w256-lr1e-2-drop0.2": (2048, {"lr": 1e-2, "model": {"n_embd": 256, "n_head": 4, "dropout": 0.2}}),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of training per variant")
    ap.add_argument("--only", nargs="*", help="variants to run (default all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="pretraining setting for every variant, e.g. --set depth=6 --set lr=0.01")
    ap.add_argument("--out", default="runs/sweep-cpu")
    ap.add_argument("--json", help="also write results here")
    args = ap.parse_args()
    if not TINY.exists():
        print(f"needs {TINY}", file=sys.stderr)
        return 2
    from gptforge.config import overrides
    from gptforge.data.shards import prepare
    from gptforge.data.train_bpe import train_on_corpus
    from gptforge.speedrun import calibrate_steps
    from gptforge.train import TrainConfig, make_config, train
    from gptforge.train.plot import read_metrics

    common = overrides(TrainConfig, args.set, where="--set")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards: dict[int, Path] = {}
    results = []
    for name in args.only or list(VARIANTS):
        vocab, over = VARIANTS[name]
        if vocab not in shards:
            shards[vocab] = out / f"data-bpe{vocab}"
            if not (shards[vocab] / "meta.json").exists():
                tok, _ = train_on_corpus(str(TINY), vocab)
                prepare(str(TINY), tok, shards[vocab], progress=False)
        run_dir = out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = make_config(BASE, common, over, {
            "data": str(shards[vocab]), "out": str(run_dir), "progress": "none", "eval_tokens": 0,
            "eval_interval": 10**6, "keep_last": 1})
        steps, per_step = calibrate_steps(cfg, args.budget)
        t0 = time.time()
        s = train(dataclasses.replace(cfg, max_steps=steps))
        rows = [r for r in read_metrics(run_dir) if r.get("train_loss") is not None]
        r = {"variant": name, "vocab": vocab, "params": s["num_params"], "steps": s["step"],
             "train_time_s": round(s["train_time_s"], 1), "wall_s": round(time.time() - t0, 1),
             "tokens_per_s": round(statistics.median(x["tokens_per_s"] for x in rows)),
             "mfu": round(statistics.median(x["mfu"] for x in rows if x.get("mfu") is not None), 3),
             "val_bpb": round(s["val_bpb"], 4)}
        results.append(r)
        print(json.dumps(r), flush=True)
    results.sort(key=lambda r: r["val_bpb"])
    print(f"\n{'variant':14s} {'vocab':>5s} {'params':>9s} {'steps':>6s} {'train s':>7s} {'tok/s':>7s} "
          f"{'MFU':>6s} {'val bpb':>8s}")
    for r in results:
        print(f"{r['variant']:14s} {r['vocab']:>5d} {r['params']:>9,d} {r['steps']:>6d} "
              f"{r['train_time_s']:>7.1f} "
              f"{r['tokens_per_s']:>7,d} {r['mfu']:>6.1%} {r['val_bpb']:>8.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
