"""Can a model copy from its context? The loss on text it has just seen, against the loss on it the
first time (the signature of induction heads, Olsson et al. 2022).

    .venv/bin/python bench/copying.py RUN_OR_CKPT [RUN_OR_CKPT ...] [--data SHARDS] [--json]

For each model: 16 spans of 60 tokens from the val split of a shard directory (default: the one the
first run trained on), each fed twice in a row ([span, span]); prints the mean loss (nats/token) on
the first copy and on the second, positions 5.. of each. A model that copies predicts the second
copy almost perfectly (loss near 0); one that cannot shows the same loss twice. The calculator
task needs exactly this skill (operands from the question into the call, the result from the
tool's output into the answer), which is why bench/chat_cpu.py records it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def copy_losses(model, tokens: np.ndarray, n: int = 16, L: int = 60, seed: int = 0) -> tuple[float, float]:
    """(first-copy loss, second-copy loss) in nats/token on ``n`` spans of ``L`` tokens of ``tokens``."""
    g = np.random.default_rng(seed)
    starts = g.integers(0, len(tokens) - L, n)
    x = torch.tensor(np.stack([tokens[s:s + L] for s in starts]).astype(np.int64))
    seq = torch.cat([x, x], 1)  # (n, 2L)
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
    nll = -torch.log_softmax(logits.float(), -1).gather(-1, seq[:, 1:, None])[..., 0]  # (n, 2L-1)
    return nll[:, 5:L - 1].mean().item(), nll[:, L + 5:].mean().item()


def main() -> int:
    from gptforge.data.shards import open_shards
    from gptforge.engine import load_for_inference

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run or checkpoint directories")
    ap.add_argument("--data", help="shard directory (default: the first run's training data)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = args.data
    if data is None:
        cfg = json.loads((Path(args.runs[0]) / "config.json").read_text())
        data = cfg["data"]
        if cfg.get("task") == "sft":
            raise SystemExit("give --data: the first run is an SFT run")
    tokens = open_shards(data).tokens("val")
    out = []
    for run in args.runs:
        model, _, _ = load_for_inference(run, "best")
        first, second = copy_losses(model, np.asarray(tokens))
        out.append({"run": run, "first_copy": first, "second_copy": second})
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{'run':60s} {'1st copy':>9s} {'2nd copy':>9s}   (nats/token)")
        for r in out:
            print(f"{r['run']:60s} {r['first_copy']:>9.3f} {r['second_copy']:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
