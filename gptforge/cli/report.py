"""`gptforge report`: runs side by side, as markdown and a PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction, help: str) -> None:
    r = sub.add_parser("report", help=help, epilog="example: gptforge report runs/x/pretrain runs/x/sft",
                       description="Training figures (metrics.jsonl) and accuracies (eval.json) of runs side "
                                   "by side: markdown, and a PNG of loss curves and accuracies beside it.")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    r.add_argument("--out", default="report.md", help="markdown file to write (default report.md); the PNG "
                                                       "goes beside it with the same name")
    r.set_defaults(func=run)


def run(args) -> int:
    from gptforge.errors import UserError
    from gptforge.eval.report import compare_markdown, compare_png, run_card
    from gptforge.io import atomic_write

    out = Path(args.out)
    if out.suffix.lower() != ".md":
        raise UserError(f"{out}: the report is markdown; give a file name ending in .md")
    cards = [run_card(d) for d in args.runs]
    png = compare_png(cards, out.with_suffix(".png"))
    text = f"# gptforge report\n\n![loss and accuracy]({png.name})\n\n" + compare_markdown(cards)
    atomic_write(out, text.encode())
    print(text)
    print(f"wrote {out} and {png}", file=sys.stderr)
    return 0
