"""Character-level tokenizer: the classic baseline (nanoGPT's shakespeare_char, char-rnn).

The vocabulary is the sorted set of characters seen in the training text; ids are positions in
that sorted list, and special tokens (if any) follow.

Example:
    >>> tok = CharTokenizer.train("hello world")
    >>> tok.chars
    ' dehlorw'
    >>> tok.encode("hello")
    [3, 2, 4, 4, 5]
    >>> tok.decode([3, 2, 4, 4, 5])
    'hello'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from gptforge.tokenizer.base import EOT, Tokenizer


class CharTokenizer(Tokenizer):
    """One token per Unicode code point.

    Args:
        chars: the vocabulary, distinct characters in id order.
        specials: special-token strings given ids ``len(chars), len(chars)+1, ...``.
    """

    kind = "char"

    def __init__(self, chars: str, specials: Sequence[str] = (EOT,)):
        if len(set(chars)) != len(chars):
            raise ValueError("chars must be distinct")
        self.chars = chars
        self.special_tokens = {s: len(chars) + i for i, s in enumerate(specials)}
        self._stoi = {c: i for i, c in enumerate(chars)}
        # vectorised encode: sorted code points and the id each maps to
        codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        order = np.argsort(codes)
        self._codes, self._ids = codes[order], order.astype(np.int64)
        self._decode = {i: c.encode("utf-8") for i, c in enumerate(chars)}
        self._decode.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})

    @classmethod
    def train(cls, texts: str | Iterable[str], specials: Sequence[str] = (EOT,)) -> CharTokenizer:
        """Vocabulary = sorted set of the characters in ``texts`` (one string or an iterable)."""
        seen: set[str] = set()
        for t in [texts] if isinstance(texts, str) else texts:  # streamed: a corpus's pieces one by one
            seen.update(t)
        return cls("".join(sorted(seen)), specials)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.special_tokens)

    def encode_ordinary(self, text: str) -> list[int]:
        """Raises ValueError for a character outside the vocabulary."""
        if not text:
            return []
        cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        pos = np.searchsorted(self._codes, cp).clip(0, len(self._codes) - 1)
        bad = self._codes[pos] != cp
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"character {text[i]!r} (U+{ord(text[i]):04X}) at index {i} is not in "
                             f"this char tokenizer's vocabulary of {len(self.chars)} characters")
        return self._ids[pos].tolist()

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            return b"".join(self._decode[int(i)] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is outside the vocabulary "
                             f"(size {self.vocab_size})") from None

    def to_dict(self) -> dict:
        return {"chars": self.chars, "special_tokens": list(self.special_tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        """Inverse of ``to_dict``. Raises KeyError/TypeError/ValueError on malformed content."""
        chars, specials = d["chars"], d["special_tokens"]
        if not isinstance(chars, str):
            raise TypeError("chars must be a string")
        if not isinstance(specials, list) or not all(isinstance(s, str) for s in specials):
            raise TypeError("special_tokens must be a list of strings")
        if len(set(specials)) != len(specials):
            raise ValueError("special tokens must be distinct")
        return cls(chars, specials)
