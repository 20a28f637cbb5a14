"""Decoding speed: gptforge's engine against Hugging Face `generate()` and llama.cpp on the same weights.

    .venv/bin/python bench/generate.py [--depth 6] [--vocab-size 50257] [--batches 1,8] [--json]

A `gpt2`-preset GPT (depth 6: 384 wide, 6 heads; vocab 4096, block 256: about 12M parameters,
10.6M of them in the blocks) with random weights is exported to `GPT2LMHeadModel` and, at batch 1,
to GGUF files in f32 and f16 (`gptforge export --format gguf`'s writer) that llama.cpp runs through
llama-cpp-python (`pip install llama-cpp-python`: it builds llama.cpp from source; without it the
llama.cpp rows are left out, saying so). The GGUF's tokenizer is a small BPE padded to the vocabulary:
every engine is fed token ids, so it only has to load. Greedy decoding from a random 16-token
prompt, best of `--repeats` rounds after a warm-up, in one process; each round runs every engine in
turn. Prints tokens/s (new tokens across the batch per second), the ratio to HF at the same batch
size, and whether each engine's greedy tokens are HF's. llama.cpp uses as many threads as torch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from gptforge.engine import generate
from gptforge.models import build_model
from gptforge.models.hf import to_hf


def best_times(runs: dict, repeats: int) -> tuple[dict[str, float], dict]:
    """Best wall time of each of ``runs`` over ``repeats`` rounds, after a warm-up of each, and what
    each returned at its warm-up. Rounds take the runs in turn, so a machine that slows down for a
    while slows every run alike."""
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}, outputs


def llama_cpp_runs(model, prompt: list[int], n: int, threads: int, folder: Path) -> dict:
    """{"llama.cpp f32": fn, "llama.cpp f16": fn}, each fn -> [new tokens] (greedy, batch 1), or {} with a
    note when llama-cpp-python is not installed."""
    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp rows left out: llama_cpp is not importable (pip install llama-cpp-python)")
        return {}
    from gptforge.data.shakespeare import corpus_text
    from gptforge.export import export_gguf
    from gptforge.tokenizer import BPETokenizer

    tok = BPETokenizer.train(corpus_text("train")[:20_000], vocab_size=300)  # padded to the model's vocab
    runs = {}
    for dtype in ("float32", "float16"):
        path = folder / f"{dtype}.gguf"
        export_gguf(model, tok, path, dtype=dtype)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.block_size, n_batch=len(prompt),
                              n_threads=threads, n_threads_batch=threads, verbose=False)

        def run(llm=llm) -> list[list[int]]:
            llm.reset()  # no prompt reuse from the previous round
            out = []
            for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                out.append(t)
                if len(out) == n:
                    return [out]
            return [out]

        runs[f"llama.cpp {dtype.replace('float', 'f')}"] = run
    return runs


def bench_batch(model, hf, B: int, args, folder: Path) -> list[dict]:
    """One row per engine at batch ``B``: seconds, tokens/s, ratio to HF and same greedy tokens as HF."""
    n = args.new_tokens
    prompts = torch.randint(0, args.vocab_size, (B, args.prompt_len))
    rows = prompts.tolist()
    hf_run = lambda: hf.generate(prompts, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=0)[:, args.prompt_len:].tolist()
    runs = {"gptforge (KV cache)": lambda: generate(model, rows, n, temperature=0)}
    if not args.skip_no_cache:
        runs["gptforge (no cache)"] = lambda: generate(model, rows, n, temperature=0, use_cache=False)
    runs["HF generate()"] = hf_run
    if B == 1:
        runs |= llama_cpp_runs(model, rows[0], n, torch.get_num_threads(), folder)
    times, outputs = best_times(runs, args.repeats)
    # same greedy tokens as HF, or the comparison is meaningless (f16 rounds the weights: near-ties may flip)
    return [{"batch": B, "engine": name, "seconds": round(t, 4), "tokens_per_s": round(B * n / t, 1),
             "vs_hf": round(times["HF generate()"] / t, 2),
             "same_tokens_as_hf": outputs[name] == outputs["HF generate()"]} for name, t in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--vocab-size", type=int, default=4096, help="GPT-2's is 50257")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes (llama.cpp runs at 1)")
    ap.add_argument("--skip-no-cache", action="store_true", help="leave out the engine without KV cache")
    ap.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default torch's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=args.vocab_size, block_size=args.block_size, preset="gpt2",
                        depth=args.depth).eval()
    hf = to_hf(model).eval()
    with tempfile.TemporaryDirectory() as folder:
        results = [r for B in map(int, args.batches.split(","))
                   for r in bench_batch(model, hf, B, args, Path(folder))]
    summary = {"params": model.num_params(), "threads": torch.get_num_threads(),
               "new_tokens": args.new_tokens, "results": results}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"gpt2 preset depth {args.depth}, vocab {args.vocab_size}: {model.num_params() / 1e6:.1f}M params, "
          f"{torch.get_num_threads()} threads, {args.new_tokens} new tokens, greedy")
    print(f"{'batch':>5}  {'engine':22s} {'tokens/s':>9}  {'vs HF':>6}  same tokens as HF")
    for r in results:
        print(f"{r['batch']:>5}  {r['engine']:22s} {r['tokens_per_s']:>9.1f}  {r['vs_hf']:>5.2f}x  "
              f"{r['same_tokens_as_hf']}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
