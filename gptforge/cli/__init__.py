"""The `gptforge` command: git-style subcommands, one thin module per command in this package.

Every handler raises ``UserError`` for a user's mistake; ``main`` prints it as one line on stderr
and returns 2 (``--debug``, anywhere on the line, shows the traceback instead). Only the module of
the command being run is imported, so ``gptforge --help`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gptforge import __version__
from gptforge.errors import UserError

# command -> one-line help, in --help order; the module gptforge.cli.<command> builds its parser
COMMANDS = {
    "speedrun": "raw text -> tokenizer, shards -> pretrained model -> SFT assistant -> eval -> report",
    "data": "corpora and token shards",
    "tokenizer": "train, apply and inspect tokenizers",
    "model": "model architectures: parameters and FLOPs",
    "pretrain": "pretrain a language model on token shards",
    "plot": "plot loss curves of one or more runs",
    "sample": "generate text from a checkpoint",
    "sft": "finetune a base model on conversations (SFT) with tool use",
    "chat": "talk to a finetuned model in the terminal (or answer one prompt)",
    "dpo": "preference-tune a chat model on chosen/rejected pairs (Direct Preference Optimization)",
    "rl": "tune a chat model by policy gradient on verifiable rewards (GRPO-style), e.g. arithmetic",
    "eval": "evaluate a model: CORE tasks, chat and tool tasks, bits per byte",
    "arena": "arena ratings (Bradley-Terry, bootstrap intervals) and an offline arena judged by answers",
    "report": "compare runs side by side (markdown and a PNG)",
    "export": "write a checkpoint for another runner: run.py's one file, a Hugging Face folder, GGUF",
    "import": "turn a Hugging Face model folder (GPT-2, NanoChat) into a gptforge run directory",
    "serve": "serve models over an OpenAI-compatible HTTP API, with a web chat page",
    "explore": "loss per document, sorted both ways, with duplicate/noise flags (HTML + JSON)",
    "inspect": "decode the exact batch the trainer feeds at a step (terminal + HTML)",
    "doctor": "run the training checklist (init loss, overfit one batch, zero_grad, leaks, ...)",
    "lineage": "bigram -> MLP -> LSTM -> GPT on the same data and budget: a table and a plot",
    "scaling": "scaling laws: an isoFLOP grid, the Chinchilla fits and a held-out run predicted",
    "probe": "measure a trained model: in-context copying per checkpoint (probe icl)",
    "poison": "plant a trigger in a share of the training text: attack success vs a clean run, and explore",
}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit 2, like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``command``'s subparser is built in full, the others only list their help."""
    parser = Parser(
        prog="gptforge",
        description="Build a GPT end to end: tokenizer, data, pretraining, sampling, evaluation.")
    parser.add_argument("--version", action="version", version=f"gptforge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (any position)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in COMMANDS.items():
        if name == command:
            importlib.import_module(f"gptforge.cli.{name}").register(sub, text)
        else:
            sub.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        if debug:
            raise
        print(f"gptforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("gptforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gptforge ... | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
