"""Decoding speed: gptforge's engine against Hugging Face `generate()` on the same weights.

    .venv/bin/python bench/generate.py [--depth 6] [--new-tokens 128] [--json]

A `gpt2`-preset GPT (depth 6: 384 wide, 6 heads; vocab 4096, block 256: about 12M parameters,
10.6M of them in the blocks) with random weights is exported to `GPT2LMHeadModel`. Greedy decoding
from a 16-token prompt, best of `--repeats` rounds after a warm-up, in one process; each round runs
every engine in turn. Prints tokens/s (new tokens across the batch per second) and the ratio to HF
at the same batch size.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gptforge.engine import generate
from gptforge.models import build_model
from gptforge.models.hf import to_hf


def best_times(runs: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each of ``runs`` over ``repeats`` rounds, after a warm-up of each. Rounds
    take the runs in turn, so a machine that slows down for a while slows every run alike."""
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=args.vocab_size, block_size=args.block_size, preset="gpt2",
                        depth=args.depth).eval()
    hf = to_hf(model).eval()
    n = args.new_tokens
    results = []
    for B in (1, 8):
        prompts = torch.randint(0, args.vocab_size, (B, args.prompt_len))
        rows = prompts.tolist()
        runs = {
            "gptforge (KV cache)": lambda rows=rows: generate(model, rows, n, temperature=0),
            "gptforge (no cache)": lambda rows=rows: generate(model, rows, n, temperature=0, use_cache=False),
            "HF generate()": lambda p=prompts: hf.generate(p, max_new_tokens=n, min_new_tokens=n,
                                                           do_sample=False, pad_token_id=0),
        }
        # same greedy tokens, or the comparison is meaningless
        with torch.no_grad():
            ref = hf.generate(prompts, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=0)[:, args.prompt_len:].tolist()
        same = generate(model, rows, n, temperature=0) == ref
        times = best_times(runs, args.repeats)
        for name, t in times.items():
            results.append({"batch": B, "engine": name, "seconds": round(t, 4),
                            "tokens_per_s": round(B * n / t, 1),
                            "vs_hf": round(times["HF generate()"] / t, 2), "same_tokens_as_hf": same})
    summary = {"params": model.num_params(), "threads": torch.get_num_threads(), "new_tokens": n,
               "results": results}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"gpt2 preset depth {args.depth}: {model.num_params() / 1e6:.1f}M params, "
          f"{torch.get_num_threads()} threads, {n} new tokens, greedy")
    print(f"{'batch':>5}  {'engine':22s} {'tokens/s':>9}  {'vs HF':>6}")
    for r in results:
        print(f"{r['batch']:>5}  {r['engine']:22s} {r['tokens_per_s']:>9.1f}  {r['vs_hf']:>5.2f}x")
    print("greedy tokens identical to HF:", all(r["same_tokens_as_hf"] for r in results))


if __name__ == "__main__":
    with torch.no_grad():
        main()
