"""Serving throughput: `gptforge serve` under 1, 8 and 32 concurrent streaming clients, against the
engine called in-process.

    .venv/bin/python bench/serve.py [--depth 4] [--new-tokens 64] [--json]

A `modern`-preset GPT with random weights and a char tokenizer without special tokens (so every
request generates exactly --new-tokens tokens) is saved as a checkpoint and served by
`gptforge serve` in a subprocess on a free port. Each client thread sends --requests streamed
``/v1/completions`` requests one after another (different prompts, temperature 1, seeded) over one
keep-alive connection, opened (and the HTTP client built) before the clock starts. Reported:
requests/s and output tokens/s over the whole run, and the median time to first token (request sent
-> first content chunk). Each row is the best of ``--repeats`` runs, each run followed by one of the
in-process engine (``gptforge.engine.generate`` on the same model at the row's batch size, for the
same prompt and token counts) while the server idles, whose best is kept too: on a shared machine the
best run is the least disturbed one, and alternating puts both under the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from gptforge.checkpoint import RunState, save_checkpoint
from gptforge.engine import generate
from gptforge.models import build_model, model_config
from gptforge.tokenizer import CharTokenizer

CHARS = "abcdefghijklmnopqrstuvwxyz .,;:!?'\n"


def start_server(ckpt: Path, max_batch: int, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gptforge", "serve", "--ckpt", f"bench={ckpt}",
                             "--port", str(port), "--max-batch", str(max_batch), "--max-queue", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})  # torch's thread count
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {proc.stderr.read()}")


def client_run(url: str, clients: int, requests: int, new_tokens: int) -> dict:
    """``clients`` threads x ``requests`` streamed requests each; returns the row's figures."""
    ttfts, tokens, errors = [], [0], []
    lock = threading.Lock()
    start = [0.0]
    ready = threading.Barrier(clients, action=lambda: start.__setitem__(0, time.perf_counter()))

    def one_client(c: int):
        with httpx.Client(timeout=600) as http:
            http.get(url + "/health")  # the client and its connection are set up before the clock starts
            ready.wait()
            for r in range(requests):
                prompt = f"request {CHARS[c % 26]}{CHARS[r % 26]}: "  # the char tokenizer has no digits
                body = {"model": "bench", "prompt": prompt, "max_tokens": new_tokens,
                        "temperature": 1.0, "seed": c * 1000 + r, "stream": True}
                t0, first, n = time.perf_counter(), None, 0
                with http.stream("POST", url + "/v1/completions", json=body) as resp:
                    if resp.status_code != 200:
                        errors.append(resp.status_code)
                        continue
                    for line in resp.iter_lines():
                        if not line.startswith("data: {"):
                            continue
                        choice = json.loads(line[6:])["choices"][0]
                        if choice["text"]:
                            first = first or time.perf_counter()
                            n += 1  # one char per token with this tokenizer, one token per chunk
                with lock:
                    ttfts.append(first - t0)
                    tokens[0] += n

    threads = [threading.Thread(target=one_client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start[0]
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: HTTP {sorted(set(errors))}")
    return {"clients": clients, "requests": clients * requests, "wall_s": round(wall, 2),
            "requests_per_s": round(clients * requests / wall, 2), "tokens_per_s": round(tokens[0] / wall, 1),
            "ttft_median_ms": round(1000 * statistics.median(ttfts), 1)}


def engine_tokens_per_s(model, batch: int, new_tokens: int, requests: int, repeats: int) -> float:
    """Best of ``repeats`` runs of ``requests`` generate() calls one after another, each for ``batch``
    rows of ``new_tokens`` tokens: the work of one server row, without HTTP."""
    prompts = [[i % len(CHARS) for i in range(12)] for _ in range(batch)]
    generate(model, prompts, 4, temperature=1.0, seed=0)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for r in range(requests):
            generate(model, prompts, new_tokens, temperature=1.0, seed=r)
        best = min(best, time.perf_counter() - t0)
    return requests * batch * new_tokens / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    ap.add_argument("--repeats", type=int, default=5, help="runs per row, each followed by one of the "
                    "engine; the best of each kept")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads here and in the server")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = CharTokenizer(CHARS, specials=())
    model = build_model("gpt", vocab_size=tok.vocab_size, block_size=args.block_size, depth=args.depth).eval()
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as d:
        tok_file = tok.save(Path(d) / "tok")
        state = RunState(step=1, model_config=model_config(model), tokenizer=tok.identity())
        save_checkpoint(Path(d) / "run", model, [], state, tokenizer_json=tok_file)
        counts = [int(c) for c in args.clients.split(",")]
        proc, url = start_server(Path(d) / "run", max(counts), args.threads)
        try:
            client_run(url, 2, 1, 8)  # warm-up
            rows = []
            for c in counts:  # server and engine runs alternate, so both see the same machine
                runs, engine = [], 0.0
                for _ in range(args.repeats):
                    runs.append(client_run(url, c, args.requests, args.new_tokens))
                    engine = max(engine, engine_tokens_per_s(model, c, args.new_tokens, args.requests, 1))
                rows.append({**max(runs, key=lambda r: r["tokens_per_s"]),
                             "engine_tokens_per_s_same_batch": round(engine)})
        finally:
            proc.terminate()
            proc.wait(30)
    engine1 = next((r["engine_tokens_per_s_same_batch"] for r in rows if r["clients"] == 1), None)
    engine1 = engine1 or engine_tokens_per_s(model, 1, args.new_tokens, args.requests, args.repeats)
    out = {"depth": args.depth, "params": n_params, "new_tokens": args.new_tokens,
           "threads": torch.get_num_threads(), "engine_tokens_per_s_batch1": round(engine1, 1), "rows": rows}
    if args.json:
        print(json.dumps(out))
        return
    print(f"modern GPT depth {args.depth} ({n_params / 1e6:.1f}M params), {args.new_tokens} new tokens per "
          f"request, {args.requests} requests per client; in-process engine at batch 1: {engine1:.0f} tok/s")
    print(f"{'clients':>7} {'req/s':>7} {'tok/s':>8} {'x 1 client':>10} {'TTFT ms':>8} {'engine tok/s':>13}")
    base = rows[0]["tokens_per_s"]
    for r in rows:
        print(f"{r['clients']:>7} {r['requests_per_s']:>7} {r['tokens_per_s']:>8} "
              f"{r['tokens_per_s'] / base:>10.2f} {r['ttft_median_ms']:>8} "
              f"{r['engine_tokens_per_s_same_batch']:>13}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
