"""Arena on the CPU: base, SFT and DPO models of the cpu speedrun in an automated arena.

1. preference pairs made by the oracle judge from SFT samples: the SFT model answers train-split
   arithmetic and letter-count questions ``--samples`` times at ``--temperature``; a question with a
   right and a wrong reply gives pairs (chosen = right, rejected = wrong; up to 2 per question);
2. DPO from the SFT checkpoint on those pairs for at most ``--dpo-time`` seconds (gptforge dpo);
3. an automated arena on held-out (test-split) questions: every pair of the three models on every
   question (sides random), greedy replies, the oracle votes by correctness;
4. Bradley-Terry ratings with bootstrap 95% intervals, online Elo, and task accuracy per model;
   a table on stdout and everything in ``OUT/arena.json`` (plus ``OUT/ratings.png``).

    .venv/bin/python bench/arena_cpu.py --base runs/bench-chat/speedrun/pretrain \\
        --sft runs/bench-chat/sft-1795387135 --out runs/bench-arena
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def oracle_pairs(model, tok, n: int, samples: int, temperature: float, seed: int, log) -> tuple[list, dict]:
    """Preference pairs (messages format) from sampled SFT replies on train-split questions."""
    from gptforge.chat.mixtures import mixture
    from gptforge.chat.render import render_for_completion
    from gptforge.eval.chat import MAX_NEW, generate_replies, reply_correct

    def answer(conv):
        return [p["text"] for p in conv[-1]["content"] if p["type"] == "tool_output"][-1]

    items = {"arithmetic": [(c[0]["content"], answer(c)) for c in mixture("arithmetic", "train", n, seed,
                                                                            max_digits=3)],
             "letter_count": [(c[0]["content"], answer(c)) for c in mixture("spelling", "train", 4 * n, seed)
                              if ".count(" in str(c[-1]["content"])][:n]}
    pairs, stats = [], {}
    for task, qs in items.items():
        prompts = [render_for_completion([{"role": "user", "content": q}], tok) for q, _ in qs]
        replies = [generate_replies(model, tok, prompts, MAX_NEW[task], batch_size=32,
                                    temperature=temperature, seed=seed * 1000 + k * 100)
                   for k in range(samples)]
        right_total, mixed, made = 0, 0, 0
        for i, (q, ref) in enumerate(qs):
            outs = [replies[k][i][0] or [{"type": "text", "text": ""}] for k in range(samples)]
            ok = [reply_correct(task, parts, ref) for parts in outs]
            right_total += sum(ok)
            good = [o for o, r in zip(outs, ok, strict=True) if r]
            bad = [o for o, r in zip(outs, ok, strict=True) if not r]
            if good and bad:
                mixed += 1
                for g, b in list(zip(good, bad, strict=False))[:2]:
                    pairs.append({"prompt": [{"role": "user", "content": q}],
                                  "chosen": [{"role": "assistant", "content": g}],
                                  "rejected": [{"role": "assistant", "content": b}]})
                    made += 1
        stats[task] = {"questions": len(qs), "samples": samples,
                       "sample_accuracy": right_total / (len(qs) * samples),
                       "questions_with_right_and_wrong": mixed, "pairs": made}
        log(f"pairs from {task}: {stats[task]}")
    return pairs, stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the pretrained (base) run")
    p.add_argument("--sft", required=True, help="the SFT run (DPO starts here)")
    p.add_argument("--out", default="runs/bench-arena")
    p.add_argument("--pair-questions", type=int, default=150, help="train questions per task for pairs")
    p.add_argument("--prefs", help="reuse the pairs of an earlier run (its OUT/prefs.jsonl); no sampling")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--dpo-time", type=float, default=120.0)
    p.add_argument("--dpo-args", default="", help="extra flags for gptforge dpo, space-separated")
    p.add_argument("--n", type=int, default=150, help="held-out questions per task in the arena")
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from gptforge.arena.auto import run_auto
    from gptforge.arena.ratings import format_table, leaderboard, plot_ratings
    from gptforge.arena.store import VoteStore
    from gptforge.cli import main as cli
    from gptforge.engine import load_for_inference

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(s):
        print(f"[{time.time() - t0:6.1f}s] {s}", file=sys.stderr, flush=True)

    sft, tok, _ = load_for_inference(args.sft, "best")
    prefs = out / "prefs.jsonl"
    if args.prefs:
        pairs = [json.loads(x) for x in Path(args.prefs).read_text().splitlines()]
        pair_stats = {"reused": args.prefs}
        if Path(args.prefs).resolve() != prefs.resolve():
            prefs.write_text(Path(args.prefs).read_text())
    else:
        pairs, pair_stats = oracle_pairs(sft, tok, args.pair_questions, args.samples, args.temperature,
                                         1000 + args.seed, log)
        prefs.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    t_pairs = time.time() - t0

    dpo_dir = out / f"dpo-{int(time.time())}"
    rc = cli(["dpo", "--ckpt", args.sft, "--prefs", str(prefs), "--out", str(dpo_dir), "--max-time",
              str(args.dpo_time), "--max-steps", "100000", "--decay-steps", "100000", "--eval-interval", "50",
              "--progress", "log", "--log-interval", "30", *args.dpo_args.split()])
    if rc:
        return rc
    recs = [json.loads(x) for x in (dpo_dir / "metrics.jsonl").read_text().splitlines()]
    dpo_evals = [{k: r[k] for k in ("step", "val_loss", "val_reward_margin", "val_reward_accuracy")}
                 for r in recs if "val_reward_margin" in r]
    log(f"dpo: {dpo_evals[-1]}")

    models = {"base": load_for_inference(args.base, "best")[:2], "sft": (sft, tok),
              "dpo": load_for_inference(str(dpo_dir), "latest")[:2]}
    store = VoteStore(out / "arena.db")
    res = run_auto(models, ["arithmetic", "letter_count"], args.n, store, seed=args.seed, all_pairs=True,
                   log=log)
    rows = leaderboard(res["battles"], rounds=args.rounds, seed=args.seed)
    plot_ratings(rows, out / "ratings.png", title="cpu speedrun arena (oracle judge)")
    print(format_table(rows))
    for m, acc in res["accuracy"].items():
        print(f"{m:>5}: " + ", ".join(f"{t} {a:.1%}" for t, a in acc.items()))
    winners = {}
    for b in res["battles"]:
        winners[b["winner"]] = winners.get(b["winner"], 0) + 1
    report = {"pairs": pair_stats, "n_pairs": len(pairs), "dpo_run": str(dpo_dir), "dpo_evals": dpo_evals,
              "arena_questions_per_task": args.n, "battles": len(res["battles"]), "outcomes": winners,
              "accuracy": res["accuracy"], "leaderboard": [r.to_dict() for r in rows],
              "seconds": {"pairs": round(t_pairs, 1), "total": round(time.time() - t0, 1)}}
    (out / "arena.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
