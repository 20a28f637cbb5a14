"""Tokenizers: text (str) <-> token ids (list[int]).

- ``CharTokenizer``: one id per character (the classic baseline).
- ``load_tokenizer(path)``: read any saved gptforge tokenizer (``tokenizer.json`` or its directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from gptforge.errors import UserError
from gptforge.tokenizer.base import EOT, Tokenizer, read_tokenizer_json
from gptforge.tokenizer.char import CharTokenizer

__all__ = ["EOT", "CharTokenizer", "Tokenizer", "load_tokenizer"]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a directory holding ``tokenizer.json`` or from the file itself.

    Raises:
        UserError: missing, truncated, corrupt or unsupported file (the message names the path).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.exists():
        raise UserError(f"{path}: no tokenizer here (expected a tokenizer.json or a directory holding one)")
    d = read_tokenizer_json(p)
    kinds: dict[str, type[Tokenizer]] = {"char": CharTokenizer}
    cls = kinds.get(d.get("kind"))
    if cls is None:
        raise UserError(f"{p}: unknown tokenizer kind {d.get('kind')!r}")
    try:
        return cls.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{p}: corrupt tokenizer file ({type(e).__name__}: {e})") from None
