"""`gptforge pretrain` and `gptforge plot`.

Every field of ``TrainConfig`` is a flag (``max_steps`` -> ``--max-steps``); model overrides are
``--model KEY=VALUE`` (repeatable). Precedence: defaults < ``--config FILE.toml`` < flags.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys

from gptforge.errors import UserError

EPILOG = """\
examples:
  gptforge pretrain --data data/shakespeare_char --max-time 300
  gptforge pretrain --data data/sc --arch gpt --depth 2 --model n_embd=128 --optimizer muon
  gptforge pretrain --resume runs/20250101-120000 --max-steps 2000
  torchrun --nproc_per_node=8 -m gptforge pretrain --config big.toml --data data/fineweb

config file (TOML): the same keys with underscores at top level, model overrides in a [model]
table. A run directory gets config.json, metrics.jsonl and ckpt/ (see gptforge.train.checkpoint);
Ctrl-C or SIGTERM finishes the step, evaluates, saves and exits 0.
"""


def _field_help() -> dict[str, str]:
    """The comment after each TrainConfig field, used as its --help text."""
    from gptforge.train.config import TrainConfig

    out = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        m = re.match(r"\s+(\w+): \w+ = .*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).replace("%", "%%")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pretrain`` and ``plot`` to the top-level parser."""
    from gptforge.train.config import CHOICES, FIELDS, TrainConfig

    p = sub.add_parser("pretrain", help="pretrain a language model on token shards",
                       description="Pretrain a model of the zoo on shards from `gptforge data prepare`. "
                                   "Flags override --config, which overrides the defaults shown.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE.toml", help="TOML file of config keys (see below)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from its latest checkpoint (its saved config; flags given here, "
                        "e.g. a larger --max-steps, override it)")
    p.add_argument("--model", action="append", default=None, metavar="KEY=VALUE",
                   help="model config override, repeatable, e.g. --model n_embd=128 --model dropout=0.1")
    helps, defaults = _field_help(), TrainConfig()
    for name, f in FIELDS.items():
        if name == "model":
            continue
        flag = "--" + name.replace("_", "-")
        text = f"{helps.get(name, '')} (default: {getattr(defaults, name)!r})"
        if f.type == "bool":
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            typ = {"int": int, "float": float, "str": str}[f.type]
            metavar = {"int": "N", "float": "X", "str": "S"}[f.type]
            if name in CHOICES:
                metavar = "{" + ",".join(CHOICES[name]) + "}"
            elif name in ("data", "out"):
                metavar = "DIR"
            p.add_argument(flag, dest=name, type=typ, default=None, metavar=metavar, help=text)
    p.set_defaults(func=cmd_pretrain)

    pl = sub.add_parser("plot", help="plot loss curves of one or more runs",
                        description="Write a PNG of train/val loss (nats/token) and val bits/byte against "
                                    "tokens, several runs overlaid.")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR")
    pl.add_argument("--out", metavar="FILE.png",
                    help="output file (default: RUN_DIR/loss.png for one run, loss.png for several)")
    pl.set_defaults(func=cmd_plot)


def cmd_pretrain(args) -> int:
    from gptforge.train.config import FIELDS, load_toml, make_config, parse_model_overrides
    from gptforge.train.trainer import resume_config, train

    file_layer = load_toml(args.config) if args.config else {}
    flags = {k: getattr(args, k) for k in FIELDS if k != "model" and getattr(args, k, None) is not None}
    if args.model:
        flags["model"] = parse_model_overrides(args.model)
    if args.resume:
        if args.out and args.out != args.resume:
            raise UserError("--resume continues a run in its own directory; leave out --out")
        cfg = resume_config(args.resume, file_layer, flags)
    else:
        cfg = make_config(file_layer, flags)
    summary = train(cfg, resume=bool(args.resume))
    if summary["stopped_by"] == "signal":
        print("interrupted: saved; continue with --resume " + summary["run_dir"], file=sys.stderr)
    return 0


def cmd_plot(args) -> int:
    from gptforge.train.plot import plot_runs

    out = args.out or (f"{args.runs[0]}/loss.png" if len(args.runs) == 1 else "loss.png")
    path = plot_runs(args.runs, out)
    print(f"wrote {path}", file=sys.stderr)
    return 0
