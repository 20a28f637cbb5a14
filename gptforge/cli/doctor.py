"""`gptforge doctor`: the common-mistakes checklist on a config's (or a run's) data and model."""

from __future__ import annotations

import argparse
import sys

from gptforge.cli.flags import add_config_flags, add_model_flag, flag_values, model_values
from gptforge.train.config import TrainConfig

EPILOG = """\
checks (Karpathy, "A Recipe for Training Neural Networks"): initial loss ~ ln V; one batch overfits;
the loss gets logits, not probabilities; dropout on in train mode only, eval deterministic; zero_grad
between steps; batches vary; targets are the next tokens; train/val overlap; lr and batch size for the
model size; tokenizer round trip; chat special tokens (SFT). Exit status 1 when a check FAILs.

example: gptforge doctor --config big.toml --data data/mine
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("doctor", help=help, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Each check PASS / WARN / FAIL with a one-line reason, on the CPU, in "
                                   "about a minute. Flags override the config.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", metavar="FILE.toml", help="a config before any training (as pretrain's)")
    g.add_argument("--run", metavar="RUN_DIR", help="the config of a run (pretraining or SFT)")
    add_model_flag(p)
    add_config_flags(p, TrainConfig, skip=("device", "progress", "out"))
    p.set_defaults(func=run)


def config_from_args(args, skip: tuple[str, ...] = ("device", "progress", "out")) -> TrainConfig:
    """The TrainConfig of --config FILE or --run DIR, with the flags given applied on top.

    Raises:
        UserError: a bad file, run directory or flag.
    """
    from gptforge.config import load_toml
    from gptforge.explore.setup import run_config
    from gptforge.train import make_config
    from gptforge.train.config import check_saved_data

    base = run_config(args.run).to_dict() if args.run else load_toml(args.config)
    flags = flag_values(args, TrainConfig, skip=skip)
    if args.model:
        flags["model"] = model_values(args.model, flags.get("arch") or base.get("arch") or TrainConfig.arch)
    cfg = make_config(base, flags, where=args.config or args.run)
    if args.run:
        check_saved_data(cfg, base["data"], args.run)
    return cfg


def run(args) -> int:
    import time

    from gptforge.explore.doctor import FAIL, run_doctor

    cfg = config_from_args(args)
    t0 = time.perf_counter()
    print(f"doctor: {cfg.task} on {cfg.data or '(no data)'}, {cfg.arch} depth {cfg.depth}, "
          f"B={cfg.batch_size} T={cfg.block_size} (on the CPU)", file=sys.stderr)
    colour = sys.stdout.isatty()
    codes = {"PASS": "32", "WARN": "33", "FAIL": "31", "SKIP": "2"}

    def show(c):
        tag = f"\033[{codes[c.status]}m{c.status}\033[0m" if colour else c.status
        print(f"{tag}  {c.name:<26} {c.reason}", flush=True)

    checks = run_doctor(cfg, on_check=show)
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == "WARN" for c in checks)
    print(f"doctor: {len(checks)} checks, {fails} FAIL, {warns} WARN in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)
    return 1 if fails else 0
