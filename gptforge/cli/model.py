"""`gptforge model ...`: describe a model architecture (parameters by component, FLOPs per token)."""

from __future__ import annotations

import argparse

from gptforge.cli.flags import add_model_flag, model_values
from gptforge.errors import UserError
from gptforge.models import ARCHS, PRESETS


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("model", help=help,
                       description="Inspect the model zoo: bigram, MLP (Bengio 2003), LSTM, GPT.")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    i = msub.add_parser(
        "info", help="parameter counts by component and FLOPs per token",
        description="Build the model (without allocating weights) and print its parameters by component "
                    "and its training FLOPs per token (6N + 12 n_layer n_embd block_size, PaLM appendix B).")
    i.add_argument("--arch", choices=ARCHS, default="gpt", help="model family (default gpt)")
    i.add_argument("--preset", choices=PRESETS, default="modern",
                   help="GPT preset (default modern)")
    i.add_argument("--depth", type=int, default=None,
                   help="GPT n_layer; width and heads follow (gpt2: 64*depth wide, 64 per head; "
                        "modern: 64*depth rounded up to 128s, 128 per head). Default 12")
    add_model_flag(i)
    i.add_argument("--vocab-size", type=int, default=None,
                   help="default: 50257 (gpt2), 50304 (modern), 256 (bigram/mlp/lstm)")
    i.add_argument("--block-size", type=int, default=None,
                   help="default: 1024 (gpt2), 2048 (modern), 256 (bigram/mlp/lstm)")
    i.set_defaults(func=run_info)


def build_from_args(args):
    """The model `model info` describes, built on the meta device (no memory, no init cost)."""
    import torch

    from gptforge.models import GPT, build_model, gpt_config

    config = model_values(args.model, args.arch)
    for name in ("vocab_size", "block_size"):
        value = getattr(args, name)
        if value is not None:
            config.update(model_values([f"{name}={value}"], args.arch))
    with torch.device("meta"):
        if args.arch == "gpt":
            return GPT(gpt_config(args.preset, args.depth, **config))
        if args.depth is not None:
            raise UserError("--depth applies to --arch gpt only (use --model n_layer=N for lstm)")
        vocab, block = config.pop("vocab_size", 256), config.pop("block_size", 256)
        return build_model(args.arch, vocab, block, **config)


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def run_info(args) -> int:
    """Print the config, parameters by component (summing to num_params()) and FLOPs per token."""
    model = build_from_args(args)
    cfg = model.config
    total = model.num_params()
    counts = model.param_counts()
    assert sum(counts.values()) == total
    title = args.arch + (f" (preset {args.preset})" if args.arch == "gpt" else "")
    fields = ", ".join(f"{k}={v}" for k, v in vars(cfg).items())
    print(f"{title}: {fields}")
    print()
    width = max(len(k) for k in [*counts, "attention 12*n_layer*n_embd*T"])
    print(f"{'component':<{width}}  {'parameters':>15}  {'share':>6}")
    for name, n in counts.items():
        print(f"{name:<{width}}  {n:>15,}  {100 * n / total:>5.1f}%")
    print(f"{'total':<{width}}  {total:>15,}  {100.0:>5.1f}%")
    n_mm = model.num_params(exclude_embeddings=True)
    print(f"{'non-embedding (N in 6N)':<{width}}  {n_mm:>15,}")
    print()
    flops = model.flops_per_token()
    attn = flops - 6 * n_mm
    print(f"training FLOPs per token (forward + backward, PaLM app. B), T = block_size = {cfg.block_size}:")
    print(f"{'6N':<{width}}  {6 * n_mm:>15,}")
    print(f"{'attention 12*n_layer*n_embd*T':<{width}}  {attn:>15,}")
    print(f"{'FLOPs per token':<{width}}  {flops:>15,}  ({_si(flops)}FLOP)")
    return 0
