"""Curriculum sampling against uniform random windows, at equal steps, on noisy Shakespeare.

    .venv/bin/python bench/curriculum_cpu.py [--time 120] [--steps N] [--json] [--out runs/bench-curriculum]

Data: the built-in corpus (37 plays; the same 4 validation plays as `gptforge data prepare --corpus
shakespeare`), with noise injected into the *train* split only, seeded: blocks of 1-4 KB inserted
between two lines of text until they add 5% to the train split's bytes, each block either random
lowercase hex strings (lines of 32-64 digits, like hashes: incompressible, 4 bits per character) or
shuffled-word lines (lines of the train plays with their words in random order: the words are
learnable, their order is not). The validation split is clean. The tokenizer is the `cpu` recipe's
(BPE, 2048 ids) trained on the noisy train split, as a user's pipeline would.

Three arms: ``uniform`` (sampling random, the default), ``curriculum``, and the control
``chunks-uniform`` (the curriculum sampler with curriculum_mix 1: its chunks, windows and random
stream, but no curriculum), so that a difference between the first two can be told from what
the sampler's mechanics and another random stream alone do. All train the `cpu` recipe's small
model (its under-a-minute variant: depth 2, n_embd 128, B=8, T=128, Muon + AdamW, WSD schedule;
about 0.6 passes over the train split in 120 s, each chunk of 8 windows drawn ~5 times), the same
seed, for the same number of steps: as many as the uniform arm takes in ``--time`` seconds,
calibrated once from a 12-step probe of it (``--steps N`` sets them directly). Equal steps rather
than a probe per arm: on this shared machine a probe can land in another job's burst (one measured
3.6 s per step instead of 0.11), and the curriculum's own cost per step is too small to matter
(compare the arms' steps/s).

Printed per arm: steps, training seconds (optimizer steps only), steps/s (a shared machine: compare
them to see whether the load was alike), the share of trained tokens that were noise, and val bits
per byte on the whole clean validation split; then the curriculum's difference and ratio to uniform.
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

# name, sampling, settings. chunks-uniform is the control: the curriculum sampler's machinery (chunks,
# windows inside them, its random stream) with curriculum_mix 1, that is without the curriculum
ARMS = [("uniform", "random", {}), ("chunks-uniform", "curriculum", {"curriculum_mix": 1.0}),
        ("curriculum", "curriculum", {})]
NOISE_SHARE = 0.05
BLOCK_BYTES = (1024, 4096)
VAL_FRACTION = 4 / 37  # with the plays written in the order below, documents 9, 18, 27, 36 are validation


def hex_line(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(rng.randint(32, 64)))


def noise_block(rng: random.Random, lines: list[str]) -> tuple[str, str]:
    """(kind, text) of one noise block of BLOCK_BYTES: whole lines, each ending in a newline."""
    kind = rng.choice(("hex", "shuffled"))
    want, out, n = rng.randint(*BLOCK_BYTES), [], 0
    while n < want:
        if kind == "hex":
            line = hex_line(rng)
        else:
            words = rng.choice(lines).split()
            rng.shuffle(words)
            line = " ".join(words)
        out.append(line + "\n")
        n += len(line) + 1
    return kind, "".join(out)


def noisy_plays(seed: int) -> tuple[list[tuple[str, list[tuple[str, bool]]]], dict]:
    """The plays as (split, segments), segments (text, is_noise) in order, and noise stats.

    Blocks go between two lines that both start with a non-space character, so every cut is
    "X\\nY" (X, Y not whitespace), where the tokenizer's split pattern cuts anyway: the ids of the
    segments encoded one by one are the ids of the whole play (checked in ``build``)."""
    from gptforge.data import shakespeare

    rng = random.Random(seed)
    train = shakespeare.plays("train")
    val = shakespeare.plays("val")
    train_bytes = sum(len(t.encode()) for _, t in train)
    wordy = [ln for _, t in train for ln in t.splitlines() if len(ln.split()) >= 4]
    # candidate places: (play, line index) where the line and the next start with a non-space
    lines = [t.splitlines(keepends=True) for _, t in train]
    places = [(p, i) for p, ls in enumerate(lines) for i in range(len(ls) - 1)
              if ls[i][:1].strip() and ls[i + 1][:1].strip()]
    inserts: dict[tuple[int, int], str] = {}
    stats = {"hex": 0, "shuffled": 0}
    while sum(stats.values()) < NOISE_SHARE * train_bytes:
        where = rng.choice(places)
        if where in inserts:
            continue
        kind, text = noise_block(rng, wordy)
        inserts[where] = text
        stats[kind] += len(text)
    docs = []
    for p, ls in enumerate(lines):
        segs, buf = [], []
        for i, line in enumerate(ls):
            buf.append(line)
            if (p, i) in inserts:
                segs += [("".join(buf), False), (inserts[(p, i)], True)]
                buf = []
        segs.append(("".join(buf), False))
        docs.append(("train", segs))
    # order the documents so that the corpus rule with VAL_FRACTION puts the val plays where they are
    order, vals = [], iter(val)
    trains = iter(docs)
    for i in range(len(docs) + len(val)):
        is_val = int((i + 1) * VAL_FRACTION) > int(i * VAL_FRACTION)
        order.append(("val", [(next(vals)[1], False)]) if is_val else next(trains))
    stats = {"train_bytes_clean": train_bytes, "noise_bytes": stats, "blocks": len(inserts)}
    return order, stats


def build(out: Path, seed: int):
    """Write the corpus (JSONL), train the tokenizer, write shards. Returns (shard dir, per-token noise
    mask of the train split (bool), stats)."""
    from gptforge.data.shards import open_shards, prepare
    from gptforge.data.train_bpe import train_on_corpus

    docs, stats = noisy_plays(seed)
    corpus = out / "noisy-shakespeare.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for _, segs in docs:
            f.write(json.dumps({"text": "".join(t for t, _ in segs)}) + "\n")
    tok, _ = train_on_corpus(str(corpus), 2048, val_fraction=VAL_FRACTION)
    meta = prepare(str(corpus), tok, out / "data", val_fraction=VAL_FRACTION, progress=False)
    assert meta["splits"]["val"]["documents"] == 4, meta["splits"]
    # the noise mask, token by token: the segments encoded one by one, documents joined by <|endoftext|>
    ids, mask = [], []
    for split, segs in docs:
        if split != "train":
            continue
        if ids:
            ids.append(tok.eot_id)
            mask.append(False)
        for text, noisy in segs:
            seg = tok.encode_ordinary(text)
            ids += seg
            mask += [noisy] * len(seg)
    shards = open_shards(out / "data")
    train = np.asarray(shards.tokens("train"), dtype=np.int64)
    if not np.array_equal(train, np.asarray(ids)):
        raise RuntimeError("the noise mask does not line up with the train shard")
    mask = np.asarray(mask)
    stats.update(train_tokens=len(train), val_tokens=int(meta["splits"]["val"]["tokens"]),
                 noise_token_share=float(mask.mean()))
    return out / "data", mask, stats


def arm_config(name: str, sampling: str, extra: dict, shards: Path, out: Path, seed: int):
    """The TrainConfig of an arm: the cpu recipe's small model, evaluated once, on the whole val split."""
    from gptforge.speedrun import CPU_SHORT, RECIPES
    from gptforge.train import make_config

    return make_config(RECIPES["cpu"].train, CPU_SHORT,
                       {"data": str(shards), "out": str(out / name), "progress": "none", "sampling": sampling,
                        "seed": seed, "eval_tokens": 0, "eval_interval": 10**9, "keep_last": 1}, extra)


def run_arm(name: str, sampling: str, extra: dict, shards: Path, out: Path, steps: int, mask: np.ndarray,
            seed: int) -> dict:
    from gptforge import checkpoint as ckpt
    from gptforge.train import train
    from gptforge.train.batches import batch_offsets

    cfg = arm_config(name, sampling, extra, shards, out, seed)
    s = train(dataclasses.replace(cfg, max_steps=steps))
    T, B = cfg.block_size, cfg.batch_size
    if sampling == "curriculum":  # tokens trained on, by chunk, from the table in the last checkpoint
        table = ckpt.read_sampler_state(Path(s["checkpoint"]))
        L = cfg.chunk_windows * T
        C = len(table["visits"])
        chunk_noise = mask[:C * L].reshape(C, L).mean(1)
        noise = float((table["visits"] * chunk_noise).sum() / table["visits"].sum())
    else:  # the windows are a pure function of (seed, index): recompute them
        offs = np.concatenate([batch_offsets(len(mask), B, T, seed, i, "random") for i in range(steps)])
        cum = np.concatenate([[0], np.cumsum(mask)])
        noise = float((cum[offs + T + 1] - cum[offs + 1]).sum() / (len(offs) * T))
    return {"arm": name, "sampling": sampling, "steps": s["step"],
            "train_time_s": round(s["train_time_s"], 1),
            "steps_per_s": round(s["step"] / s["train_time_s"], 2), "tokens": s["tokens"],
            "noise_share": round(noise, 4), "val_bpb": round(s["val_bpb"], 4),
            "val_loss": round(s["val_loss"], 4), "params": s["num_params"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=float, default=120.0, help="seconds of uniform training the step count "
                    "is calibrated for (default 120)")
    ap.add_argument("--steps", type=int, help="give every arm this many steps (default: what uniform takes "
                    "in --time)")
    ap.add_argument("--seed", type=int, default=1337, help="noise, model init and sampling")
    ap.add_argument("--out", default="runs/bench-curriculum", help="scratch folder (replaced)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shards, mask, stats = build(out, args.seed)
    print(f"data: {stats['train_tokens']:,} train tokens ({stats['noise_token_share']:.1%} noise: "
          f"{stats['blocks']} blocks, {stats['noise_bytes']['hex']:,} bytes hex, "
          f"{stats['noise_bytes']['shuffled']:,} bytes shuffled words), {stats['val_tokens']:,} clean val "
          "tokens", file=sys.stderr)
    steps = args.steps
    if steps is None:
        from gptforge.speedrun import calibrate_steps

        steps, per_step = calibrate_steps(arm_config(*ARMS[0], shards, out, args.seed), args.time)
        print(f"uniform: {per_step * 1000:.1f} ms/step -> {steps} steps for {args.time:.0f} s",
              file=sys.stderr)
    arms = [run_arm(name, sampling, extra, shards, out, steps, mask, args.seed)
            for name, sampling, extra in ARMS]
    u, ctl, c = arms
    result = {"data": stats, "arms": arms, "time_s": None if args.steps else args.time, "steps": steps,
              "val_bpb_difference": round(c["val_bpb"] - u["val_bpb"], 4),
              "val_bpb_ratio": round(c["val_bpb"] / u["val_bpb"], 4),
              "val_bpb_difference_to_control": round(c["val_bpb"] - ctl["val_bpb"], 4)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"\n{'arm':14s} {'steps':>6s} {'train s':>8s} {'steps/s':>8s} {'noise share':>12s} {'val bpb':>8s}")
    for r in arms:
        print(f"{r['arm']:14s} {r['steps']:>6d} {r['train_time_s']:>8.1f} {r['steps_per_s']:>8.2f} "
              f"{r['noise_share']:>12.1%} {r['val_bpb']:>8.4f}")
    print(f"curriculum - uniform: {result['val_bpb_difference']:+.4f} bpb "
          f"(ratio {result['val_bpb_ratio']:.4f}); curriculum - chunks-uniform: "
          f"{result['val_bpb_difference_to_control']:+.4f} bpb")
    rates = [r["steps_per_s"] for r in arms]
    if max(rates) > 1.15 * min(rates):
        print("the arms' steps/s differ by more than 15%: the machine's load changed between them",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
