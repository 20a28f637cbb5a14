"""`gptforge inspect batch`: decode the exact (x, y) the trainer feeds at a step."""

from __future__ import annotations

import argparse
import sys

from gptforge.cli.flags import add_config_flags, add_model_flag
from gptforge.train.config import TrainConfig


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("inspect", help=help, description=help)
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    b = what.add_parser("batch", help="the batch of one training step",
                        epilog="example: gptforge inspect batch --run runs/sft --step 0 --html b.html",
                        description="Recompute and decode the micro-batch the trainer feeds at optimizer "
                                    "step N; SFT's trained targets are marked (green, or between ⟦ ⟧).")
    g = b.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", metavar="FILE.toml", help="a config, before any training")
    g.add_argument("--run", metavar="RUN_DIR", help="a run directory (pretraining or SFT)")
    b.add_argument("--step", type=int, required=True, metavar="N", help="optimizer step, from 0")
    b.add_argument("--micro", type=int, default=0, metavar="M", help="micro step within it (default 0)")
    b.add_argument("--rank", type=int, default=0, metavar="R", help="process (default 0)")
    b.add_argument("--rows", type=int, default=None, metavar="K", help="rows to print (default all)")
    b.add_argument("--html", metavar="FILE", help="also write the batch as a static HTML page")
    add_model_flag(b)
    add_config_flags(b, TrainConfig, skip=("device", "progress", "out"))
    b.set_defaults(func=run)


def run(args) -> int:
    from gptforge.cli.doctor import config_from_args
    from gptforge.explore.batch import batch_at, decode_batch, render_html, render_terminal
    from gptforge.explore.setup import world_size
    from gptforge.io import atomic_write

    cfg = config_from_args(args)
    world = world_size(args.run)
    x, y, tok = batch_at(cfg, args.step, args.micro, args.rank, world)
    rows = decode_batch(tok, x, y)
    print(f"step {args.step} micro {args.micro} rank {args.rank}/{world}: x, y of shape {tuple(x.shape)}; "
          f"{int((y != -1).sum()):,} of {y.numel():,} targets trained ({cfg.task})", file=sys.stderr)
    print(render_terminal(rows, colour=sys.stdout.isatty(), max_rows=args.rows))
    if args.html:
        atomic_write(args.html, render_html(rows, f"{cfg.task} batch: step {args.step}, micro {args.micro}, "
                                                  f"rank {args.rank}").encode("utf-8"))
        print(f"html: {args.html}", file=sys.stderr)
    return 0
