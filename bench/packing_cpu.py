"""BOS-aligned best-fit packing (``sampling packed``) against random windows, at equal steps, on a
corpus of short documents.

    .venv/bin/python bench/packing_cpu.py [--steps 600] [--block-size 256] [--json] [--out runs/bench-packing]

Data (from ../shared/data, see its README): the GSM8K problems (train and test: question, a
newline, worked answer) and the LAMBADA passages (context and continuation), 13,945 independent
documents of 125-1,692 bytes (median 389), in a seeded random order, one JSONL line each; every
10th document is validation (the corpus rule for multi-document corpora). Tokenizer: BPE with 2048 ids trained
on the train documents, as the `cpu` recipe's.

Two arms, the same seed and model (the `cpu` recipe's under-a-minute variant: modern GPT, depth 2,
n_embd 128, Muon + AdamW, WSD schedule, B=8) and steps: ``random`` (uniform random windows, the
default) and ``packed``. Printed per arm: steps, training seconds, steps/s (a shared machine:
compare them), the cropped share of document tokens (packed: the mean of train_cropped), and val
bits per byte two ways: on the whole val split in consecutive windows (the project's metric; most
windows start mid-document) and on BOS-aligned rows of the val documents (packed rows of the val
split: every scored token sees its document from the start, as nanochat evaluates). Then the
cropped share the packer reaches at other block sizes on the same train split (no training).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = (("evals/gsm8k/train.jsonl", ("question", "answer"), "\n"),
           ("evals/gsm8k/test.jsonl", ("question", "answer"), "\n"),
           ("evals/icl/language_understanding/lambada_openai.jsonl", ("context", "continuation"), " "))


def build(out: Path, seed: int) -> tuple[Path, dict]:
    """Write the corpus (JSONL), train the tokenizer, write shards; returns (shard dir, meta)."""
    from gptforge.data.shards import prepare
    from gptforge.data.train_bpe import train_on_corpus

    docs = []
    for rel, (a, b), sep in SOURCES:
        path = SHARED / rel
        if not path.is_file():
            raise SystemExit(f"{path}: missing (the reference data beside the repository; see its README)")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                docs.append(r[a] + sep + r[b])
    random.Random(seed).shuffle(docs)
    corpus = out / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    tok, _ = train_on_corpus(str(corpus), 2048)
    meta = prepare(str(corpus), tok, out / "data", progress=False)
    return out / "data", meta


def arm_config(sampling: str, shards: Path, out: Path, seed: int, T: int, steps: int):
    from gptforge.speedrun import RECIPES
    from gptforge.train import make_config

    return make_config(RECIPES["cpu"].train,
                       {"depth": 2, "model": {"n_embd": 128, "n_head": 2, "dropout": 0.0}, "batch_size": 8,
                        "block_size": T, "data": str(shards), "out": str(out / sampling), "progress": "none",
                        "sampling": sampling, "seed": seed, "eval_tokens": 0, "eval_interval": 10**9,
                        "keep_last": 1, "max_steps": steps})


def bos_aligned_bpb(run_dir: Path, shards: Path, T: int) -> float:
    """Val bits per byte on packed rows of the val split: enough micro-batches of 8 rows to take
    about as many document tokens as the split holds (seed 0, the same rows for every arm)."""
    import contextlib

    import torch

    from gptforge.checkpoint import load_checkpoint
    from gptforge.data.shards import open_shards
    from gptforge.train.batches import PackedBatches
    from gptforge.train.evaluate import evaluate
    from gptforge.train.session import Dist

    sh = open_shards(shards)
    val = sh.tokens("val")
    packed = PackedBatches(val, 8, T, 0, sh.meta["tokenizer"]["eot_id"])
    model, _ = load_checkpoint(run_dir, "latest")
    token_bytes = torch.from_numpy(sh.tokenizer().token_bytes().astype(np.int64))
    batches = (packed.get(i) for i in range(max(1, len(val) // (8 * (T + 1)))))
    return evaluate(model, batches, token_bytes, contextlib.nullcontext(), Dist("cpu"))[1]


def run_arm(sampling: str, shards: Path, out: Path, seed: int, T: int, steps: int) -> dict:
    from gptforge.train import train

    cfg = arm_config(sampling, shards, out, seed, T, steps)
    s = train(dataclasses.replace(cfg, max_steps=steps))
    recs = [json.loads(ln) for ln in (out / sampling / "metrics.jsonl").read_text().splitlines()]
    cropped = [r["train_cropped"] for r in recs if "train_cropped" in r]
    return {"arm": sampling, "steps": s["step"], "train_time_s": round(s["train_time_s"], 1),
            "steps_per_s": round(s["step"] / s["train_time_s"], 2), "tokens": s["tokens"],
            "cropped": round(float(np.mean(cropped)), 4) if cropped else None,
            "val_bpb": round(s["val_bpb"], 4),
            "val_bpb_bos_aligned": round(bos_aligned_bpb(out / sampling, shards, T), 4),
            "params": s["num_params"]}


def crop_shares(shards: Path, sizes=(64, 128, 256, 512, 1024, 2048), batches: int = 50) -> dict:
    """The packer's cropped share of the train split's document tokens at each block size."""
    from gptforge.data.shards import open_shards
    from gptforge.train.batches import PackedBatches

    sh = open_shards(shards)
    out = {}
    for T in sizes:
        p = PackedBatches(sh.tokens("train"), 8, T, 0, sh.meta["tokenizer"]["eot_id"])
        c = np.array([p.rows(i)[1:] for i in range(batches)]).sum(0)
        out[T] = round(float(c[0] / c[1]), 4)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps per arm (default 600)")
    ap.add_argument("--block-size", type=int, default=256, help="T (default 256)")
    ap.add_argument("--seed", type=int, default=1337, help="document order, model init and sampling")
    ap.add_argument("--out", default="runs/bench-packing", help="scratch folder (replaced)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shards, meta = build(out, args.seed)
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    print(f"data: {tr['documents']:,} train documents ({tr['tokens']:,} tokens), {va['documents']:,} val "
          f"({va['tokens']:,} tokens)", file=sys.stderr)
    arms = [run_arm(s, shards, out, args.seed, args.block_size, args.steps) for s in ("random", "packed")]
    r, p = arms
    result = {"data": {"train": tr, "val": va}, "block_size": args.block_size, "arms": arms,
              "val_bpb_difference": round(p["val_bpb"] - r["val_bpb"], 4),
              "val_bpb_bos_aligned_difference": round(p["val_bpb_bos_aligned"] - r["val_bpb_bos_aligned"], 4),
              "cropped_by_block_size": crop_shares(shards)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"\n{'arm':8s} {'steps':>6s} {'train s':>8s} {'steps/s':>8s} {'cropped':>8s} {'val bpb':>8s} "
          f"{'BOS-aligned':>12s}")
    for a in arms:
        crop = "-" if a["cropped"] is None else f"{a['cropped']:.1%}"
        print(f"{a['arm']:8s} {a['steps']:>6d} {a['train_time_s']:>8.1f} {a['steps_per_s']:>8.2f} {crop:>8s} "
              f"{a['val_bpb']:>8.4f} {a['val_bpb_bos_aligned']:>12.4f}")
    print(f"packed - random: {result['val_bpb_difference']:+.4f} bpb (windows), "
          f"{result['val_bpb_bos_aligned_difference']:+.4f} bpb (BOS-aligned rows)")
    print("cropped share by block size: " + ", ".join(
        f"T={t}: {s:.1%}" for t, s in result["cropped_by_block_size"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
