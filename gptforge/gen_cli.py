"""`gptforge sample` and `gptforge export` (to be filled in)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the sampling and export subcommands to the top-level parser."""
