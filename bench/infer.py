"""Decoding speed against batch size: tokens/s, latency per token, memory-bandwidth utilisation.

    .venv/bin/python bench/infer.py [--ckpt RUN] [--device cpu|cuda] [--dtype float32|bfloat16]
                                    [--batches 1,2,4,8,16,32] [--new-tokens 32] [--json FILE]

Greedy decoding with gptforge's engine (KV cache) from random prompts of ``--prompt-len`` tokens,
best of ``--repeats`` rounds after a warm-up, as nanochat's ``infer_bench.py`` does. Without
``--ckpt`` the model is a random-weight ``gpt2``-preset GPT (``--depth``, ``--vocab-size``,
``--block-size``): decoding speed does not depend on the weights' values.

Per batch size B: tokens/s (new tokens across the batch per second), latency per token (seconds per
decoding step, prefill included, over the new tokens), and memory-bandwidth utilisation: the bytes
one decoding step must read (every weight once, plus the KV cache of all B rows at the mean
sequence length of the run) times steps per second, over the bandwidth a large on-device copy
reaches on this machine (measured first; on CUDA the vendor's datasheet figure is printed beside it).
Small batches are bound by memory bandwidth, so their utilisation is the figure to watch; large
ones turn compute-bound.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gptforge.engine import check_device, generate, load_for_inference
from gptforge.models import build_model

# HBM bandwidth, bytes/s (vendor datasheets: SXM parts)
CUDA_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, mbytes: int = 256, seconds: float = 0.5) -> float:
    """Best bytes/s (read + write) of copying a ``mbytes`` MB float32 tensor on ``device``."""
    src = torch.ones(mbytes * (1 << 20) // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = max(best, 2 * src.numel() * 4 / (time.perf_counter() - t0))
    return best


def bytes_per_step(model, batch: int, mean_len: float) -> float:
    """Bytes one decoding step reads: every parameter once, plus keys and values of ``batch`` rows
    at ``mean_len`` positions in every layer (the cache has the parameters' dtype)."""
    cfg = model.config
    elt = next(model.parameters()).element_size()
    weights = sum(p.numel() for p in model.parameters()) * elt
    n_kv = getattr(cfg, "n_kv_head", None) or cfg.n_head
    kv = 2 * cfg.n_layer * batch * n_kv * mean_len * (cfg.n_embd // cfg.n_head) * elt
    return weights + kv


def sweep(model, batches: list[int], prompt_len: int, new_tokens: int, repeats: int,
          bandwidth: float) -> list[dict]:
    """One row of figures per batch size (module docstring)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    rows = []
    for B in batches:
        prompts = torch.randint(0, vocab, (B, prompt_len), generator=g).tolist()
        generate(model, prompts, new_tokens, temperature=0)  # warm-up (allocator, kernels)
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            generate(model, prompts, new_tokens, temperature=0)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        step_s = best / new_tokens
        moved = bytes_per_step(model, B, prompt_len + new_tokens / 2) / step_s
        rows.append({"batch": B, "tokens_per_s": round(B * new_tokens / best, 1),
                     "latency_ms_per_token": round(1000 * step_s, 3),
                     "bandwidth_gb_s": round(moved / 1e9, 2),
                     "bandwidth_util": round(moved / bandwidth, 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="", help="a run or checkpoint directory (default: a random model)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="the weights' and KV cache's dtype")
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default="", metavar="FILE", help="also write the figures as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(check_device(args.device))
    if args.ckpt:
        model, _, _ = load_for_inference(args.ckpt, device=str(device))
    else:
        torch.manual_seed(0)
        model = build_model("gpt", vocab_size=args.vocab_size, block_size=args.block_size, preset="gpt2",
                            depth=args.depth).to(device).eval()
    model = model.to(getattr(torch, args.dtype))
    if args.prompt_len + args.new_tokens > model.config.block_size:
        ap.error(f"--prompt-len + --new-tokens must fit the model's block size {model.config.block_size}")
    batches = [int(b) for b in args.batches.split(",")]
    measured = copy_bandwidth(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    datasheet = next((bw for key, bw in CUDA_BANDWIDTH.items() if key in name), None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = sweep(model, batches, args.prompt_len, args.new_tokens, args.repeats, measured)
    summary = {"device": name, "dtype": args.dtype, "params": sum(p.numel() for p in model.parameters()),
               "threads": torch.get_num_threads(), "prompt_len": args.prompt_len,
               "new_tokens": args.new_tokens, "copy_bandwidth_gb_s": round(measured / 1e9, 1),
               "datasheet_bandwidth_gb_s": datasheet and round(datasheet / 1e9), "results": rows}
    if device.type == "cuda":
        summary["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
    print(f"{name}, {args.dtype}, {summary['params']:,} parameters, {args.prompt_len}-token prompts, "
          f"{args.new_tokens} new tokens; copy bandwidth {measured / 1e9:.1f} GB/s"
          + (f" (datasheet {datasheet / 1e9:.0f} GB/s)" if datasheet else ""))
    print(f"{'batch':>5} {'tokens/s':>10} {'ms/token':>9} {'GB/s':>8} {'of copy bw':>10}")
    for r in rows:
        print(f"{r['batch']:>5} {r['tokens_per_s']:>10,.0f} {r['latency_ms_per_token']:>9.2f} "
              f"{r['bandwidth_gb_s']:>8.1f} {100 * r['bandwidth_util']:>9.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
