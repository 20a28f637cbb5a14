"""`gptforge lineage`: bigram, MLP, LSTM and GPT on the same shards under the same budget, then a
table and a plot (gptforge.lab.lineage)."""

from __future__ import annotations

import argparse

from gptforge.cli.flags import add_config_flags, flag_values
from gptforge.config import overrides
from gptforge.lab.lineage import LineageConfig

EPILOG = """\
examples:
  gptforge lineage --corpus shakespeare --time 60          # about 5 minutes on 2 CPU cores
  gptforge lineage --time 60 --match flops                 # the GPT's 60 s of FLOPs for each model
  gptforge lineage --corpus notes.txt --prompt "Dear" --train block_size=64
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "lineage", help=help, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a bigram, an MLP (Bengio et al. 2003), an LSTM and a GPT on the same BPE shards, "
                    "each with the same budget, and write OUT/lineage.md (parameters, FLOPs per token, "
                    "tokens seen, tokens/s, val bits per byte, a sample of each), lineage.png and "
                    "lineage.json.")
    add_config_flags(p, LineageConfig)
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="a training setting for every model, e.g. --train block_size=64, or --train "
                        "max_steps=200 for a step budget instead of --time (repeatable; keys as the flags "
                        "of `gptforge pretrain --help`)")
    p.set_defaults(func=run)


def run(args) -> int:
    from gptforge.lab.lineage import lineage
    from gptforge.train.config import TrainConfig

    lc = LineageConfig(**flag_values(args, LineageConfig))
    lineage(lc, overrides(TrainConfig, args.train, where="--train"))
    return 0
