"""Command-line flags generated from a config dataclass (see gptforge.config): one flag per field,
``max_steps`` -> ``--max-steps N``, with the field's help, choices and default in ``--help``.

Values stay strings until ``flag_values`` converts them with ``gptforge.config.convert``, so a
wrong value is one line (``--lr nan: expected a finite number >= 0 and <= 10``), not argparse's
usage dump.
"""

from __future__ import annotations

import argparse

from gptforge.config import convert, overrides, specs

FINETUNE_HELP = "\nDefaults below: this command's own, or \"the base run's\" for a setting taken from it.\n"


def add_config_flags(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                     defaults: object | None = None, finetune: dict | None = None) -> None:
    """Add ``--field-name`` for every field of ``cls`` not in ``skip`` (``dict`` fields are skipped).
    ``defaults``: an instance whose values --help shows (default: the class defaults).
    ``finetune``: a finetuning command's resets (`gptforge.train.config.finetune_config`): --help
    shows those, and "the base run's" for every other field."""
    for name, s in specs(cls).items():
        if name in skip or s.type is dict:
            continue
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name) if defaults is not None else s.default
        shown = repr(default)
        if finetune is not None:
            shown = repr(finetune[name]) if name in finetune else "the base run's"
        text = f"{s.help} (default: {shown})".replace("%", "%%")
        if s.type is bool and not s.optional:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        metavar = s.metavar or ("{" + ",".join(map(str, s.choices)) + "}" if s.choices
                                else {int: "N", float: "X", str: "S", bool: "BOOL"}[s.type])
        p.add_argument(flag, dest=name, default=None, metavar=metavar, help=text)


def flag_values(args: argparse.Namespace, cls: type, skip: tuple[str, ...] = ()) -> dict:
    """The fields of ``cls`` given on the command line, converted and checked.

    Raises:
        UserError: a value the field does not accept (one line naming the flag).
    """
    out = {}
    for name, s in specs(cls).items():
        v = getattr(args, name, None)
        if name in skip or s.type is dict or v is None:
            continue
        out[name] = convert(cls, name, v, as_flag=True)
    return out


def add_model_flag(p: argparse.ArgumentParser) -> None:
    """``--model KEY=VALUE`` (repeatable): a field of the architecture's config."""
    p.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the model's config, typed as that field declares, e.g. "
                        "--model n_embd=128 --model bias=false --model logit_softcap=none (repeatable)")


def model_values(items: list[str], arch: str) -> dict:
    """``--model`` items typed by ``arch``'s config class (GPTConfig, LSTMConfig, ...).

    Raises:
        UserError: no ``=``, unknown field for this arch, or a value the field does not accept.
    """
    from gptforge.models import config_class

    return overrides(config_class(arch), items, where="--model")
