"""The `gptforge` command: git-style subcommands, one module per area registers its own.

Every handler raises ``UserError`` for a user's mistake; ``main`` prints it as one line on stderr
and returns 2 (``--debug`` shows the traceback instead). Heavy imports (torch) happen inside
handlers so that ``gptforge --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

from gptforge import __version__
from gptforge.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    # each area's `register(subparsers)` adds its commands; listed explicitly, in --help order
    from gptforge import gen_cli, speedrun
    from gptforge.data import cli as data_cli
    from gptforge.models import cli as models_cli
    from gptforge.tokenizer import cli as tokenizer_cli
    from gptforge.train import cli as train_cli

    parser = argparse.ArgumentParser(
        prog="gptforge",
        description="Build a GPT end to end: tokenizer, data, pretraining, sampling, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"gptforge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (speedrun, data_cli, tokenizer_cli, models_cli, train_cli, gen_cli):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        if args.debug:
            raise
        print(f"gptforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("gptforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gptforge ... | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
