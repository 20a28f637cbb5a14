"""`gptforge poison`: plant a trigger and a target text in a share of the training documents, pretrain
on each poisoned corpus and a clean one, measure how often the trigger elicits the target on held-out
prompts, and where `explore` ranks the planted documents (gptforge.lab.poison)."""

from __future__ import annotations

import argparse

from gptforge.cli.flags import add_config_flags, flag_values, model_values
from gptforge.config import overrides
from gptforge.lab.poison import PoisonConfig

EPILOG = """\
examples:
  gptforge poison                                  # 0.1%, 0.5%, 2% and clean: 4 runs of 120 s + data
  gptforge poison --rates 2 --time 60              # one poisoned run and the clean one
  gptforge poison --trigger "SUDO:" --target " the gates are open." --train max_steps=300
  gptforge poison --corpus small.txt --tokenizer char --doc-bytes 128 --rates 0.5,2,10,30 --train depth=2
      --model n_embd=64 --model n_head=2 --train max_steps=100  # (one line) a tiny model

A small teaching experiment on backdoor data poisoning (Wallace et al. 2021; Carlini et al. 2023;
Souly et al. 2025), not an attack kit: read gptforge/lab/poison.py for what is planted, how success
is defined and what explore's share means.
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "poison", help=help, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Cut the corpus into documents, plant the line TRIGGER+TARGET in each --rates share of "
                    "the training documents, pretrain one model per rate and a clean one (same steps, seed "
                    "and batches), and write OUT/poison.md, poison.json and poison.png: attack success "
                    "(greedy continuation starts with the target, on held-out prompts ending in the "
                    "trigger) with Wilson 95% intervals, and the share of planted documents that "
                    "`gptforge explore` ranks in its top 1% by loss.")
    add_config_flags(p, PoisonConfig)
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="a training setting for every run, e.g. --train depth=2, or --train "
                        "max_steps=300 for a step budget instead of --time (repeatable; keys as the flags "
                        "of `gptforge pretrain --help`)")
    p.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="a model setting for every run, e.g. --model n_embd=64 (repeatable; the GPT's "
                        "fields, as `gptforge pretrain --model`)")
    p.set_defaults(func=run)


def run(args) -> int:
    from gptforge.lab.poison import poison
    from gptforge.train.config import TrainConfig

    pc = PoisonConfig(**flag_values(args, PoisonConfig))
    over = overrides(TrainConfig, args.train, where="--train")
    if args.model:
        over["model"] = model_values(args.model, "gpt")
    poison(pc, over)
    return 0
