"""Evaluation speed: gptforge's evaluator against lm-evaluation-harness on the same model and tasks.

    .venv/bin/python bench/eval.py [--n 200] [--depth 4] [--json]
    .venv/bin/python bench/eval.py --core-ckpt runs/speedrun/pretrain     # + wall time of --tasks core

Both score the same zero-shot prompts (gptforge.eval.lmeval writes lm-eval task configs that read
the local ARC-Easy, PIQA and LAMBADA files) with the same weights: a `gpt2`-preset GPT with the
GPT-2 vocabulary (random weights, so nothing depends on a download), exported to a Hugging Face
folder for lm-eval's HFLM. Examples per second = items scored / wall seconds of the scoring call
(lm-eval: `simple_evaluate`, including its request building; ours: `evaluate_core`, likewise).
Both in one process, one after the other, with the same torch threads; accuracies are printed
beside the speeds, and must agree (the cross-check test asserts it per example).

With --core-ckpt, also times `gptforge eval --tasks core` (all CORE tasks present, each task's
own few-shot count, every item or --core-limit of them) on that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TASKS = ["arc_easy", "piqa", "lambada_openai"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="items per task (default 200)")
    ap.add_argument("--depth", type=int, default=4, help="model depth (default 4: 256 wide)")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size (default 16)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--core-ckpt", help="also time `gptforge eval --tasks core` on this checkpoint")
    ap.add_argument("--core-limit", type=int, help="items per CORE task in that run (default: all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from gptforge.eval.core import evaluate_core
    from gptforge.eval.lmeval import hf_gpt2_tokenizer, write_task_configs
    from gptforge.models import GPT, gpt_config
    from gptforge.models.hf import save_hf
    from gptforge.tokenizer import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(gpt_config("gpt2", depth=args.depth, block_size=args.block_size)).eval()
    tok = load_tokenizer(SHARED / "tiktoken" / "r50k_base.tiktoken")
    icl = SHARED / "evals" / "icl"
    res = {"n": args.n, "tasks": TASKS, "params": model.num_params(), "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="gptforge-bench-eval-") as tmp:
        tmp = Path(tmp)
        names = write_task_configs(tmp / "tasks", TASKS, icl, tmp / "datasets")
        lm = HFLM(pretrained=str(save_hf(model, tmp / "hf")), tokenizer=hf_gpt2_tokenizer(SHARED / "gpt2"),
                  batch_size=args.batch_size, max_length=args.block_size, device="cpu")
        manager = TaskManager(include_path=str(tmp / "tasks"), include_defaults=False)
        simple_evaluate(model=lm, tasks=names[:1], num_fewshot=0, limit=4, task_manager=manager)  # warm-up
        t0 = time.perf_counter()
        theirs = simple_evaluate(model=lm, tasks=names, num_fewshot=0, limit=args.n, task_manager=manager)
        t_theirs = time.perf_counter() - t0

    evaluate_core(model, tok, icl, tasks=TASKS[:1], limit=4, shots=0, bos=False, split="lmeval")  # warm-up
    t0 = time.perf_counter()
    ours = evaluate_core(model, tok, icl, tasks=TASKS, limit=args.n, shots=0, bos=False, split="lmeval")
    t_ours = time.perf_counter() - t0
    items = sum(r["n"] for r in ours["tasks"].values())
    acc = {t: (ours["tasks"][t].get("accuracy_sum", ours["tasks"][t]["accuracy"]),
               theirs["results"][f"gf_{t}"]["acc,none"]) for t in TASKS}
    res.update(items=items, ours_s=t_ours, lmeval_s=t_theirs, ours_per_s=items / t_ours,
               lmeval_per_s=items / t_theirs, speedup=t_theirs / t_ours,
               accuracy={t: {"ours": a, "lm_eval": b} for t, (a, b) in acc.items()})

    if args.core_ckpt:
        from gptforge.cli import main as cli

        t0 = time.perf_counter()
        out = Path(tempfile.mkdtemp(prefix="gptforge-bench-core-")) / "eval.json"
        argv = ["eval", "--ckpt", args.core_ckpt, "--tasks", "core", "--out", str(out), "--no-progress"]
        argv += ["--limit", str(args.core_limit)] if args.core_limit else []
        assert cli(argv) == 0
        res["core_wall_s"] = time.perf_counter() - t0
        core = json.loads(out.read_text())
        res["core"] = core["core"]
        res["core_items"] = sum(r["n"] for r in core["tasks"].values())

    if args.json:
        print(json.dumps(res))
        return 0
    print(f"\nmodel: gpt2 preset, depth {args.depth}, {res['params']:,} parameters, vocab 50257, "
          f"{res['threads']} threads; {items} items ({', '.join(TASKS)}, zero-shot)", file=sys.stderr)
    print(f"{'evaluator':24s} {'seconds':>8s} {'items/s':>8s}  accuracy (arc_easy / piqa / lambada)")
    for name, s, key in (("gptforge", t_ours, "ours"), ("lm-evaluation-harness", t_theirs, "lm_eval")):
        accs = " / ".join(f"{res['accuracy'][t][key]:.3f}" for t in TASKS)
        print(f"{name:24s} {s:>8.1f} {items / s:>8.1f}  {accs}")
    print(f"speed-up: {res['speedup']:.2f}x")
    if args.core_ckpt:
        limit = f" --limit {args.core_limit}" if args.core_limit else ""
        print(f"gptforge eval --tasks core{limit} on {args.core_ckpt}: {res['core_wall_s']:.0f} s wall, "
              f"{res['core_items']:,} items, CORE {res['core']:.4f}")
    print(json.dumps(res), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
