"""`gptforge speedrun`: raw text to an assistant that uses a calculator, in one command, with a report
(stages: gptforge.speedrun.STAGES)."""

from __future__ import annotations

import argparse

from gptforge.cli.flags import add_config_flags, add_model_flag, flag_values, model_values
from gptforge.config import overrides
from gptforge.errors import UserError
from gptforge.speedrun import RECIPES, SpeedrunConfig


def register(sub: argparse._SubParsersAction, help: str) -> None:
    lines = "\n".join(f"  {n:12s} {r.description}" for n, r in RECIPES.items())
    p = sub.add_parser(
        "speedrun", help=help,
        description="Run the whole pipeline on a corpus and write OUT/report.md.\n\npresets:\n" + lines,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, SpeedrunConfig)
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pretraining setting of the preset, e.g. --train depth=6 --train lr=0.01 "
                        "(repeatable; keys as the flags of `gptforge pretrain --help`)")
    add_model_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from gptforge.speedrun import speedrun
    from gptforge.train.config import TrainConfig

    sr = SpeedrunConfig(**flag_values(args, SpeedrunConfig))
    train = overrides(TrainConfig, args.train, where="--train")
    if "model" in train or "data" in train or "out" in train:
        raise UserError(
            "--train: set data and out through the speedrun's own --corpus and --out, model fields "
            "with --model")
    arch = train.get("arch") or RECIPES[sr.preset].train.get("arch", "gpt")
    train["model"] = model_values(args.model, arch)
    report = speedrun(sr, train)
    print(f"report: {report}")
    return 0
