"""`gptforge scaling`: an isoFLOP grid, the Chinchilla fits (Approach 3 with bootstrap intervals,
Approach 2 beside it) and a held-out run predicted before it is trained (gptforge.lab.scaling)."""

from __future__ import annotations

import argparse

from gptforge.cli.flags import add_config_flags, flag_values
from gptforge.lab.scaling import ScalingConfig

EPILOG = """\
examples:
  gptforge scaling --corpus shakespeare --quick            # 3 budgets x 3 depths, about a minute on 2 cores
  gptforge scaling --corpus shakespeare --out runs/scaling # 4 budgets x 5 depths, about 6 minutes
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "scaling", help=help, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an isoFLOP grid (compute budgets C = 6 N D x model depths), fit L(N, D) = E + "
                    "A/N^alpha + B/D^beta (Chinchilla Approach 3, bootstrap 95% intervals) and a parabola "
                    "per budget (Approach 2), predict a run at a larger budget before training it, then "
                    "train it; write OUT/scaling.md, scaling.png and scaling.json.")
    add_config_flags(p, ScalingConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from gptforge.lab.scaling import scaling

    scaling(ScalingConfig(**flag_values(args, ScalingConfig)))
    return 0
