"""`gptforge probe`: measure what a trained model does. `probe icl`: in-context copying of random token
spans, for each checkpoint of each run (gptforge/lab/icl.py)."""

from __future__ import annotations

import argparse
import sys

from gptforge.errors import UserError

EPILOG = """\
examples:
  gptforge probe icl --ckpt runs/speedrun-cpu-.../pretrain
  gptforge probe icl --ckpt runs/d2 runs/d4 runs/d6 --out runs/icl   # a sweep's runs, one line each

a run keeps its last checkpoints (--keep-last, 2 by default) and its best: train with
--keep-last 20 to see copying appear over the steps.
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("probe", help=help, description=help)
    cmds = p.add_subparsers(dest="probe_command", metavar="SUBCOMMAND", required=True)
    i = cmds.add_parser("icl", help="in-context copying: loss on a random span the second time against the "
                                    "first, per checkpoint",
                        description="Random token spans fed twice in a row; the loss (nats/token) on the "
                                    "first and the second copy, and the induction score, their difference "
                                    "(Olsson et al. 2022), for every checkpoint of every run; a table, "
                                    "icl.md, icl.json and icl.png (the score against the training step).",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("--ckpt", nargs="+", required=True, metavar="RUN",
                   help="run directories (each checkpoint it keeps is scored) or checkpoint directories")
    i.add_argument("--n", type=int, default=32, help="spans (default 32)")
    i.add_argument("--length", type=int, default=50,
                   help="tokens per span, cut to half the model's context (default 50)")
    i.add_argument("--seed", type=int, default=0, help="seed of the spans (default 0)")
    i.add_argument("--out", default="runs/probe-icl", metavar="DIR",
                   help="where icl.md, icl.json and icl.png go (default runs/probe-icl)")
    i.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    i.set_defaults(func=run_icl)


def run_icl(args) -> int:
    from gptforge.engine import check_device
    from gptforge.lab import icl

    for flag, value, lo, hi in (("--n", args.n, 1, 100_000), ("--length", args.length, 2, 1 << 20),
                                ("--seed", args.seed, 0, 2**32 - 1)):
        if not lo <= value <= hi:
            raise UserError(f"{flag} {value}: expected {lo}..{hi}")
    rows = icl.probe(args.ckpt, args.n, args.length, args.seed, check_device(args.device),
                     progress=lambda s: print(s, file=sys.stderr, flush=True))
    note = (f"`gptforge probe icl --ckpt {' '.join(args.ckpt)} --n {args.n} --length {args.length} "
            f"--seed {args.seed}`: loss in nats/token; induction score = 1st - 2nd copy.")
    out = icl.write(rows, args.out, note)
    print(icl.table(rows))
    print(f"wrote {out}/icl.md, icl.json, icl.png", file=sys.stderr)
    return 0
