"""What dropout costs a CPU training step: our Dropout against torch's nn.Dropout, in one run.

    .venv/bin/python bench/dropout.py [--repeats 3] [--json]

Three measurements, each best of ``--repeats`` rounds that take the variants in turn:
1. one (16, 128, 192) activation (the cpu recipe's past five minutes), forward and backward through
   ``gptforge.models.cpu.Dropout`` and through ``nn.Dropout``, p = 0.1;
2. SDPA forward and backward on (16, 3, 128, 64) queries, keys and values, causal, with
   ``dropout_p`` 0 and 0.1 (why the GPT has no dropout on attention probabilities);
3. an AdamW training step of that model (depth 4, n_embd 192, 3 heads, vocab 2048, B=16, T=128):
   no dropout, dropout 0.1 with ours, dropout 0.1 with nn.Dropout swapped in.
Prints milliseconds and ratios.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from generate import best_times  # bench/generate.py, next to this script
from torch import nn

from gptforge.models import build_model
from gptforge.models.cpu import Dropout, use_cpu_kernels


def best_ms(runs: dict, repeats: int, inner: int) -> dict[str, float]:
    """Best mean milliseconds per call of each of ``runs``: generate.py's `best_times` (rounds take
    the runs in turn) over ``inner`` calls per round."""
    rounds = {name: (lambda fn=fn: [fn() for _ in range(inner)]) for name, fn in runs.items()}
    return {name: t / inner * 1e3 for name, t in best_times(rounds, repeats)[0].items()}


def training_step(dropout: float, torch_dropout: bool):
    """A closure running one AdamW step of the 192-wide cpu-recipe model on fixed random tokens."""
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=2048, block_size=128, preset="modern", depth=4, n_embd=192,
                        n_head=3, dropout=dropout).train()
    if not torch_dropout:
        use_cpu_kernels(model)  # as the trainer does on the CPU
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randint(0, 2048, (16, 128)), torch.randint(0, 2048, (16, 128))

    def step():
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the best of each variant counts")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    torch.manual_seed(0)

    x = torch.randn(16, 128, 192, requires_grad=True)
    ours, theirs = Dropout(0.1).train(), nn.Dropout(0.1).train()
    mask = best_ms({"ours": lambda: ours(x).sum().backward(),
                    "nn.Dropout": lambda: theirs(x).sum().backward(),
                    "no dropout": lambda: x.sum().backward()}, args.repeats, 50)

    q, k, v = (torch.randn(16, 3, 128, 64, requires_grad=True) for _ in range(3))
    sdpa = best_ms({f"dropout_p {p}": (lambda p=p: F.scaled_dot_product_attention(
        q, k, v, dropout_p=p, is_causal=True).sum().backward()) for p in (0.0, 0.1)}, args.repeats, 20)

    step = best_ms({"no dropout": training_step(0.0, False), "ours 0.1": training_step(0.1, False),
                    "nn.Dropout 0.1": training_step(0.1, True)}, args.repeats, 5)

    results = {"activation_fwd_bwd_ms": mask, "sdpa_fwd_bwd_ms": sdpa, "train_step_ms": step}
    for title, r in results.items():
        print(title + ": " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    print(f"dropout on one activation: nn.Dropout / ours = {mask['nn.Dropout'] / mask['ours']:.2f}x; "
          f"SDPA with dropout / without = {sdpa['dropout_p 0.1'] / sdpa['dropout_p 0.0']:.2f}x; "
          f"training step with nn.Dropout / ours = {step['nn.Dropout 0.1'] / step['ours 0.1']:.2f}x, "
          f"ours / none = {step['ours 0.1'] / step['no dropout']:.2f}x")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
