"""The interface every gptforge tokenizer shares, and the saved-file format.

A tokenizer maps text (str) to token ids (list[int], each in [0, vocab_size)) and back. Special
tokens such as ``<|endoftext|>`` have ids of their own and are only produced by ``encode`` when
the caller allows them, as in tiktoken: text that contains a special-token string raises
``ValueError`` unless that token is in ``allowed_special`` (or listed in ``disallowed_special=()``).

Saved tokenizers are one UTF-8 JSON file (``tokenizer.json``): human-readable, versioned, no pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from gptforge.errors import UserError
from gptforge.io import atomic_write

FORMAT = "gptforge.tokenizer"
FORMAT_VERSION = 1
EOT = "<|endoftext|>"

AllowedSpecial = Literal["all"] | Collection[str]
DisallowedSpecial = Literal["all"] | Collection[str]


class Tokenizer:
    """Base class: subclasses implement ``encode_ordinary``, ``decode_bytes``, ``vocab_size``,
    ``to_dict`` and ``from_dict``, and set ``self.special_tokens`` (str -> id)."""

    kind: str = "base"
    special_tokens: dict[str, int]

    # --- to implement -----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating special-token strings as ordinary text."""
        raise NotImplementedError

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The UTF-8 bytes that ``ids`` stand for (special tokens give their own string)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """A JSON-serialisable description sufficient for ``from_dict`` (without format keys)."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------
    @property
    def eot_id(self) -> int | None:
        """Id of ``<|endoftext|>`` (the document separator), or None if this tokenizer has none."""
        return self.special_tokens.get(EOT)

    def encode(
        self,
        text: str,
        allowed_special: AllowedSpecial = (),
        disallowed_special: DisallowedSpecial = "all",
    ) -> list[int]:
        """Encode ``text`` to ids with tiktoken's special-token semantics.

        Raises:
            ValueError: ``text`` contains a disallowed special-token string.
        """
        return self._encode_with(self.encode_ordinary, text, allowed_special, disallowed_special)

    def _encode_with(self, encode_ordinary, text: str, allowed_special: AllowedSpecial,
                     disallowed_special: DisallowedSpecial) -> list[int]:
        """``encode`` with a given ordinary encoder (subclasses pass a reference encoder)."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        disallowed = (
            set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        )
        for s in disallowed:
            if s in text:
                raise ValueError(
                    f"text contains the special token {s!r}; pass allowed_special={{{s!r}}} to encode it "
                    "as a special token, or disallowed_special=() to encode it as ordinary text"
                )
        if not allowed:
            return encode_ordinary(text)
        # split on allowed special strings, leftmost first, longest first on ties (the alternation
        # tries them longest first); the captured specials are the odd pieces
        specials = "|".join(map(re.escape, sorted(allowed, key=len, reverse=True)))
        pieces = re.split(f"({specials})", text)
        return [i for k, piece in enumerate(pieces)
                for i in ([self.special_tokens[piece]] if k % 2 else encode_ordinary(piece))]

    def encode_batch(self, texts: Iterable[str], **kwargs) -> list[list[int]]:
        """``encode`` for each text in order."""
        return [self.encode(t, **kwargs) for t in texts]

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        """Ids to text. Invalid UTF-8 (a token sequence cut mid-character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self) -> np.ndarray:
        """int32 array (vocab_size,): UTF-8 bytes each token stands for; 0 for special tokens.

        Used for bits per byte: total nats / ln 2 / sum(token_bytes[targets]).
        """
        out = np.array([len(self.decode_bytes([i])) for i in range(self.vocab_size)], dtype=np.int32)
        out[list(self.special_tokens.values())] = 0
        return out

    # --- persistence ------------------------------------------------------------------------
    def to_json(self) -> str:
        d = {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, **self.to_dict()}
        return json.dumps(d, ensure_ascii=False, indent=1) + "\n"

    def fingerprint(self) -> str:
        """sha256 (hex) of the saved form: two tokenizers with equal fingerprints encode alike."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def identity(self) -> dict:
        """What shard and checkpoint metadata record to tie data to this tokenizer."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                "sha256": self.fingerprint()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` into directory ``path`` (or to ``path`` if it ends in .json).

        Written to a temporary file and renamed, so a crash never leaves a half-written file.
        Returns the file written.
        """
        path = Path(path)
        if path.suffix != ".json":
            if path.exists() and not path.is_dir():
                raise UserError(f"{path}: exists and is not a directory")
            path.mkdir(parents=True, exist_ok=True)
            path = path / "tokenizer.json"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, self.to_json())
