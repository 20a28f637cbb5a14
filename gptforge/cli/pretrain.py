"""`gptforge pretrain`: every TrainConfig field is a flag; model fields are ``--model KEY=VALUE``.

Precedence: defaults < ``--config FILE.toml`` < flags (< the checkpoint's saved config, then the
flags, with ``--resume``).
"""

from __future__ import annotations

import argparse
import sys

from gptforge.cli.flags import add_config_flags, add_model_flag, flag_values, model_values
from gptforge.errors import UserError
from gptforge.train.config import TrainConfig

EPILOG = """\
examples:
  gptforge pretrain --data data/shakespeare_char --max-time 300
  gptforge pretrain --data data/sc --arch gpt --depth 2 --model n_embd=128 --optimizer muon
  gptforge pretrain --data data/sc --model bias=true --model logit_softcap=none
  gptforge pretrain --resume runs/20250101-120000 --max-steps 2000
  torchrun --nproc_per_node=8 -m gptforge pretrain --config big.toml --data data/fineweb
  torchrun --nproc_per_node=8 -m gptforge pretrain --parallel fsdp --config big.toml --data data/fineweb

config file (TOML): the same keys with underscores at top level, model overrides in a [model]
table ("none" turns an optional field off). A run directory gets config.json, metrics.jsonl and
ckpt/ (see gptforge/checkpoint.py); Ctrl-C or SIGTERM finishes the step, evaluates, saves and
exits 0.
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("pretrain", help=help,
                       description="Pretrain a model of the zoo on shards from `gptforge data prepare`. "
                                   "Flags override --config, which overrides the defaults shown.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE.toml", help="TOML file of config keys (see below)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from its latest checkpoint (its saved config; flags given here, "
                        "e.g. a larger --max-steps, override it)")
    add_model_flag(p)
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=run)


def config_from_args(args) -> tuple[TrainConfig, bool]:
    """(config, resume) from the parsed flags, --config and --resume.

    Raises:
        UserError: a bad flag, file or key.
    """
    from gptforge.config import load_toml
    from gptforge.train import make_config, resume_config

    file_layer = load_toml(args.config) if args.config else {}
    file_layer = {k: v for k, v in make_config(file_layer, where=args.config).to_dict().items()
                  if k in file_layer}
    flags = flag_values(args, TrainConfig)
    if args.model:
        arch = flags.get("arch") or file_layer.get("arch") or TrainConfig.arch
        if args.resume and "arch" not in flags:
            from gptforge.checkpoint import find_checkpoint, read_trainer_state
            arch = read_trainer_state(find_checkpoint(args.resume)).config.get("arch", arch)
        flags["model"] = model_values(args.model, arch)
    if args.resume:
        if args.out and args.out != args.resume:
            raise UserError("--resume continues a run in its own directory; leave out --out")
        return resume_config(args.resume, file_layer, flags), True
    cfg = make_config(file_layer, flags, where="command line")
    if cfg.dial:
        cfg = make_config(_dial(cfg, set(file_layer) | set(flags)), file_layer, flags, where="command line")
    return cfg, False


def _dial(cfg: TrainConfig, explicit: set[str]) -> dict:
    """The depth dial's values for ``cfg`` (gptforge.train.config.depth_dial), its rules printed.
    Raises UserError for an arch other than gpt or unreadable shards."""
    import os

    import torch

    from gptforge.data.shards import open_shards
    from gptforge.models import build_model
    from gptforge.train.config import DIAL_REF_DEPTH, depth_dial

    if cfg.arch != "gpt":
        raise UserError(f"dial: the depth dial sets a gpt's training; this run's arch is {cfg.arch}")
    if not cfg.data:
        raise UserError("no data: pass --data DIR (a shard directory from `gptforge data prepare`)")
    vocab = open_shards(cfg.data).meta["tokenizer"]["vocab_size"]

    def params(depth: int) -> int:
        with torch.device("meta"):  # shapes only: no memory, no init
            return build_model("gpt", vocab_size=vocab, block_size=cfg.block_size, preset=cfg.preset,
                               depth=depth, **cfg.model).num_params(exclude_embeddings=True)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    values, lines = depth_dial(cfg, explicit, params(cfg.depth), params(DIAL_REF_DEPTH),
                               cfg.batch_size * cfg.block_size * world)
    if os.environ.get("RANK", "0") == "0":
        print("\n".join(lines), file=sys.stderr)
    return values


def run(args) -> int:
    from gptforge.train import train

    cfg, resume = config_from_args(args)
    summary = train(cfg, resume=resume)
    if summary["stopped_by"] == "signal":
        print("interrupted: saved; continue with --resume " + summary["run_dir"], file=sys.stderr)
    return 0
