"""`gptforge plot`: loss curves of one or more runs in one PNG."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("plot", help=help,
                       description="Write a PNG of train/val loss (nats/token) and val bits/byte against "
                                   "tokens, several runs overlaid.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE.png",
                   help="output file (default: RUN_DIR/loss.png for one run, loss.png for several)")
    p.set_defaults(func=run)


def run(args) -> int:
    from gptforge.train.plot import plot_runs

    out = args.out or (f"{args.runs[0]}/loss.png" if len(args.runs) == 1 else "loss.png")
    path = plot_runs(args.runs, out)
    print(f"wrote {path}", file=sys.stderr)
    return 0
