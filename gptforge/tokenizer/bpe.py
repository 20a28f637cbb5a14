"""Byte-level BPE tokenizer: trained here (``train.py``) or loaded from OpenAI rank files.

A ``BPETokenizer`` is a table of *ranks* (token bytes -> id), a regex split pattern and special
tokens: exactly what defines a ``tiktoken`` encoding. Encoding follows tiktoken's rule (the
reference implementation is ``byte_pair_merge`` in openai/tiktoken's ``src/lib.rs``): split the
text with the pattern; within each chunk start from single bytes and repeatedly merge the adjacent
pair whose concatenation has the lowest rank, until no adjacent pair is a token. For a vocabulary
trained by BPE the rank of a token is its id, so this replays the merges in training order.

Two encoders implement that rule:

- ``encode`` / ``encode_ordinary`` / ``encode_batch``: a ``tiktoken.Encoding`` built from our ranks
  (Rust; the fast path);
- ``reference_encode_ordinary``: ``bpe_encode_chunk`` below, plain Python, for tests and reading.

Example:
    >>> tok = BPETokenizer.train("hug pug pun bun hugs " * 20, vocab_size=256 + 3 + len(SPECIAL_TOKENS))
    >>> [tok.decode([i]) for i in range(256, 259)]
    ['ug', ' p', 'hug']
    >>> tok.encode("hugs")
    [258, 115]
    >>> tok.encode("<|endoftext|>", allowed_special="all") == [tok.eot_id]
    True
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import regex

from gptforge.errors import UserError
from gptforge.tokenizer.base import EOT, AllowedSpecial, DisallowedSpecial, Tokenizer
from gptforge.tokenizer.train import TIE_BREAKS, count_chunks, fix_surrogates, merges_to_tokens, train_merges

# Split patterns, exactly as tiktoken's openai_public.py defines them.
#: GPT-2 (r50k_base, p50k_base): contractions, optional-space + letters/numbers/other, whitespace.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
#: GPT-4 (cl100k_base): case-insensitive contractions, numbers in groups of at most 3 digits,
#: newlines kept apart from other whitespace.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
    r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
#: GPT-4o (o200k_base): also splits CamelCase and attaches contractions to their word.
O200K_SPLIT_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
#: names accepted wherever a split pattern is (``train(pattern="gpt2")``, ``--pattern gpt2``)
SPLIT_PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN, "o200k": O200K_SPLIT_PATTERN}

#: How many ids below ``vocab_size`` may be unused. OpenAI's encodings leave a few (cl100k_base: 16,
#: o200k_base: 19) between their ordinary and special tokens; a bound keeps a corrupt file whose
#: special id is 10**12 from making ``vocab_size`` (and every array sized by it) absurd.
MAX_UNUSED_IDS = 1024
#: Bound on the total bytes of the tokens a saved file's merges define, when loading: merges can
#: double a token's length each (``[[0, 0], [256, 256], [257, 257], ...]``), so 40 of them would
#: ask for a terabyte. Real vocabularies average under 10 bytes a token; the floor keeps
#: tokenizers trained on long repeated runs loadable.
MAX_AVG_TOKEN_BYTES = 64
MIN_TOKEN_BYTES_BOUND = 16 << 20

#: Special tokens of a tokenizer trained here, in id order after the ordinary tokens. Besides the
#: document separator they reserve the chat-format markers, so a base model's tokenizer can be
#: finetuned for chat and tool use later without retraining it (or resizing the embeddings).
SPECIAL_TOKENS = (
    EOT,
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|tool_call_start|>", "<|tool_call_end|>",
    "<|tool_output_start|>", "<|tool_output_end|>",
)


def resolve_pattern(pattern: str) -> str:
    """A pattern name (``gpt2``, ``gpt4``, ``o200k``) to its regex; any other string is the regex.

    Raises:
        UserError: the string is not a valid regex (``regex`` module syntax).
    """
    pattern = SPLIT_PATTERNS.get(pattern, pattern)
    try:
        regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError) as e:
        raise UserError(f"invalid split pattern {pattern!r}: {e}") from None
    return pattern


def check_training_pattern(pattern: str) -> None:
    """Refuse a split pattern that would train on something other than the text.

    A capturing group makes ``findall`` return the group, not the match, so training would see
    only the group (tiktoken's encoder uses the whole match): use ``(?:...)``. Whether the pattern
    covers the text is checked while splitting (``train.count_chunks``).

    Raises:
        UserError: the pattern has a capturing group.
    """
    if regex.compile(pattern).groups:
        raise UserError(f"split pattern {pattern!r} has a capturing group: training would see only "
                        "the group, encoding the whole match; write the group as (?:...)")


def training_settings(vocab_size: int, pattern: str, n_special: int) -> tuple[str, int]:
    """``(split regex, number of merges)`` for training a vocabulary of ``vocab_size`` ids with
    ``n_special`` special tokens on ``pattern`` (a name such as "gpt4", or a regex).

    Raises:
        UserError: no room for the 256 bytes and the special tokens, or a pattern that cannot train
            (see ``check_training_pattern``).
    """
    pattern = resolve_pattern(pattern)
    check_training_pattern(pattern)
    n_merges = vocab_size - 256 - n_special
    if n_merges < 0:
        raise UserError(f"vocab size {vocab_size} is too small: it must hold the 256 byte tokens and "
                        f"{n_special} special tokens (at least {256 + n_special})")
    return pattern, n_merges


def bpe_encode_chunk(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Reference BPE for one pre-split chunk, by tiktoken's rule (lowest-rank pair first).

    O(n^2) in the chunk length: fine for tests, not for corpora (use ``BPETokenizer.encode``).
    Ties (the same lowest-rank pair at several places) go to the leftmost, as in tiktoken.

    Example:
        >>> ranks = {bytes([i]): i for i in range(256)} | {b"ug": 256, b"hug": 257}
        >>> bpe_encode_chunk(b"hugs", ranks)
        [257, 115]
    """
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while True:
        # (rank, position) of every adjacent pair that is a token: min() takes the leftmost lowest
        ranked = [(ranks[p], i) for i, p in enumerate(map(bytes.__add__, parts, parts[1:])) if p in ranks]
        if not ranked:
            return [ranks[p] for p in parts]
        _, i = min(ranked)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


class BPETokenizer(Tokenizer):
    """Byte-level BPE: ranks + split pattern + special tokens (a tiktoken encoding).

    Args:
        tokens: id -> token bytes for the ordinary (mergeable) tokens; ids need not be contiguous
            (OpenAI's encodings leave gaps where special tokens sit). Ids 0..255 must exist
            for a byte-level tokenizer to encode any text, but this is not enforced for imported
            rank files (they all satisfy it).
        pattern: split regex (``regex`` module syntax, as tiktoken's ``pat_str``).
        special_tokens: special string -> id, disjoint from ``tokens``' ids.
        merges: for tokenizers trained here, ``merges[i]`` = the two ids whose concatenation is
            token ``256 + i``; saved instead of the token bytes. None for imported rank files.
        name: a label (``cl100k_base``, ``bpe``) shown by ``inspect`` and used as tiktoken's name.

    Raises:
        ValueError: duplicate or negative ids, special ids that collide with ordinary ones, or
            ids so sparse that more than ``MAX_UNUSED_IDS`` below ``vocab_size`` are unused.

    If two merges produce the same bytes (possible in principle, not seen on real text), tiktoken
    can hold only one: the lower id is used when encoding, both decode. rustbpe's tiktoken export
    behaves the same.
    """

    kind = "bpe"

    def __init__(self, tokens: dict[int, bytes], pattern: str, special_tokens: dict[str, int],
                 merges: Sequence[tuple[int, int]] | None = None, name: str = "bpe"):
        if any(i < 0 for i in tokens) or any(i < 0 for i in special_tokens.values()):
            raise ValueError("token ids must be >= 0")
        clash = set(tokens) & set(special_tokens.values())
        if clash:
            raise ValueError(f"special token ids {sorted(clash)[:5]} are also ordinary token ids")
        if len(set(special_tokens.values())) != len(special_tokens):
            raise ValueError("two special tokens share an id")
        top = max([*tokens, *special_tokens.values()], default=-1)
        if top + 1 > len(tokens) + len(special_tokens) + MAX_UNUSED_IDS:
            raise ValueError(f"id {top} leaves more than {MAX_UNUSED_IDS} of the ids below it unused "
                             f"({len(tokens)} tokens, {len(special_tokens)} special)")
        self.pattern = pattern
        self.special_tokens = dict(special_tokens)
        self.merges = [tuple(m) for m in merges] if merges is not None else None
        self.name = name
        self._decoder: dict[int, bytes] = dict(tokens)
        self.ranks: dict[bytes, int] = {}
        for i in sorted(tokens):  # lower id wins on duplicate bytes (see class docstring)
            self.ranks.setdefault(tokens[i], i)
        self._decoder.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        self._vocab_size = max(self._decoder, default=-1) + 1
        self._regex = regex.compile(pattern)
        self._enc = None  # tiktoken.Encoding, built on first use (~0.1 s per 100k tokens)
        self._json: str | None = None

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_merges(cls, merges: Sequence[tuple[int, int]], pattern: str,
                    special_tokens: Sequence[str] = SPECIAL_TOKENS, name: str = "bpe") -> BPETokenizer:
        """Tokenizer whose token ``256 + i`` is ``merges[i]``; special tokens get the ids after.

        Raises:
            ValueError: a merge refers to an id not defined before it.
        """
        tokens = merges_to_tokens(merges)
        specials = {s: len(tokens) + k for k, s in enumerate(special_tokens)}
        return cls(dict(enumerate(tokens)), pattern, specials, merges=merges, name=name)

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int, pattern: str = "gpt4",
              special_tokens: Sequence[str] = SPECIAL_TOKENS, tie_break: str = "rustbpe",
              progress: bool = False) -> BPETokenizer:
        """Train on ``texts`` (one string or an iterable of strings, each pre-split on its own).

        Args:
            vocab_size: total ids including the 256 bytes and the special tokens, so
                ``vocab_size - 256 - len(special_tokens)`` merges are learned (fewer if the text
                runs out of pairs first; ``vocab_size`` of the result then is smaller).
            pattern: ``"gpt4"`` (cl100k's, default), ``"gpt2"``, ``"o200k"`` or a regex.
            tie_break: ``"rustbpe"`` or ``"hf"``: whose numbering of the base bytes breaks ties
                between equally frequent pairs (see ``gptforge.tokenizer.train``).
            progress: show tqdm progress bars for the split and the merges.

        Algorithm: ``train.count_chunks`` then ``train.train_merges`` (Sennrich et al. 2016,
        GPT-2's byte-level BPE); the merges equal rustbpe's (or HF tokenizers' with ``"hf"``).

        Raises:
            UserError: ``vocab_size`` leaves no room for the 256 bytes and special tokens, an
                invalid pattern, one with a capturing group or one that does not match every
                character of ``texts``, or an unknown ``tie_break``.
        """
        from tqdm import tqdm

        texts = tqdm([texts] if isinstance(texts, str) else texts, desc="splitting", unit=" texts",
                     disable=not progress, leave=False)
        return train_bpe(texts, vocab_size, pattern, special_tokens, tie_break, progress)[0]

    # --- the Tokenizer interface ------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Largest id + 1 (OpenAI encodings have a few unused ids below it)."""
        return self._vocab_size

    @property
    def tiktoken_encoding(self):
        """The ``tiktoken.Encoding`` for these ranks, pattern and special tokens (built once)."""
        if self._enc is None:
            import tiktoken

            self._enc = tiktoken.Encoding(self.name, pat_str=self.pattern, mergeable_ranks=self.ranks,
                                          special_tokens=self.special_tokens)
        return self._enc

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text``, special-token strings included, as ordinary text (tiktoken)."""
        return self.tiktoken_encoding.encode_ordinary(text)

    def encode(self, text: str, allowed_special: AllowedSpecial = (),
               disallowed_special: DisallowedSpecial = "all") -> list[int]:
        """tiktoken's ``encode``: special-token strings raise unless allowed (see ``Tokenizer``).

        Raises:
            ValueError: ``text`` holds a disallowed special token, or ``allowed_special`` names a
                string that is not one of this tokenizer's special tokens.
        """
        allowed = self._check_allowed(allowed_special)
        try:
            return self.tiktoken_encoding.encode(text, allowed_special=allowed,
                                                 disallowed_special=disallowed_special)
        except ValueError:
            # tiktoken's message spans several lines; raise the base class's one-line message
            return self._encode_with(self.encode_ordinary, text, allowed_special, disallowed_special)

    def encode_batch(self, texts: Iterable[str], allowed_special: AllowedSpecial = (),
                     disallowed_special: DisallowedSpecial = "all", num_threads: int = 8) -> list[list[int]]:
        """``encode`` each text, in parallel threads (tiktoken releases the GIL)."""
        allowed = self._check_allowed(allowed_special)
        texts = list(texts)
        try:
            return self.tiktoken_encoding.encode_batch(
                texts, num_threads=num_threads, allowed_special=allowed,
                disallowed_special=disallowed_special)
        except ValueError:
            return [self.encode(t, allowed_special, disallowed_special) for t in texts]  # one-line error

    def _check_allowed(self, allowed_special: AllowedSpecial) -> Any:
        if allowed_special == "all":
            return "all"
        allowed = set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names {sorted(unknown)}, which are not special tokens of "
                             f"this tokenizer ({sorted(self.special_tokens)})")
        return allowed

    def reference_encode_ordinary(self, text: str) -> list[int]:
        """``encode_ordinary`` in plain Python (``bpe_encode_chunk`` per chunk): slow, for tests."""
        chunks = self._regex.finditer(fix_surrogates(text))  # whole matches, as tiktoken
        return [i for m in chunks for i in bpe_encode_chunk(m.group().encode("utf-8"), self.ranks)]

    def reference_encode(self, text: str, allowed_special: AllowedSpecial = (),
                         disallowed_special: DisallowedSpecial = "all") -> list[int]:
        """``encode`` with the pure-Python encoder and the base class's special-token splitting."""
        self._check_allowed(allowed_special)
        return self._encode_with(self.reference_encode_ordinary, fix_surrogates(text),
                                 allowed_special, disallowed_special)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Raises ValueError for an id that is not a token."""
        try:
            return b"".join([self._decoder[i] for i in ids])
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, (int, np.integer)) or i not in self._decoder)
            raise ValueError(f"token id {bad!r} is not in this tokenizer's vocabulary "
                             f"(size {self.vocab_size})") from None

    def token_bytes(self) -> np.ndarray:
        """See ``Tokenizer.token_bytes``; unused ids (gaps) also count 0 bytes."""
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i, b in self._decoder.items():
            out[i] = len(b)
        out[list(self.special_tokens.values())] = 0
        return out

    # --- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Trained tokenizers save their merges (``[[left, right], ...]``, token ``256 + i`` for
        merge ``i``), imported ones their ranks (``"ranks"``: base64 token bytes by id, as in a
        ``.tiktoken`` file, ``null`` for ids that are special or unused)."""
        d: dict[str, Any] = {"name": self.name, "pattern": self.pattern,
                             "special_tokens": self.special_tokens}
        if self.merges is not None:
            d["merges"] = [list(m) for m in self.merges]
        else:
            d["ranks"] = [base64.b64encode(self._decoder[i]).decode("ascii")
                          if i in self._decoder and i not in self.special_tokens.values() else None
                          for i in range(self.vocab_size)]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        """Inverse of ``to_dict``. Raises ValueError/KeyError/TypeError on malformed content."""
        pattern, name, specials = d["pattern"], d.get("name", "bpe"), d["special_tokens"]
        if not isinstance(pattern, str) or not isinstance(specials, dict) or not isinstance(name, str):
            raise TypeError("pattern and name must be strings and special_tokens an object")
        if not all(isinstance(s, str) and type(i) is int for s, i in specials.items()):
            raise TypeError("special_tokens must map strings to integer ids")
        try:
            regex.compile(pattern)
        except (regex.error, OverflowError, RecursionError) as e:
            raise ValueError(f"invalid split pattern: {e}") from None
        if "merges" in d:
            merges = d["merges"]
            if not isinstance(merges, list) or not all(
                    isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m) for m in merges):
                raise ValueError("merges must be a list of [left_id, right_id] integer pairs")
            bound = max(MAX_AVG_TOKEN_BYTES * (256 + len(merges)), MIN_TOKEN_BYTES_BOUND)
            tokens = dict(enumerate(merges_to_tokens(merges, bound)))
            return cls(tokens, pattern, specials, merges=[tuple(m) for m in merges], name=name)
        ranks = d["ranks"]
        if not isinstance(ranks, list):
            raise TypeError("ranks must be a list")
        if not all(r is None or isinstance(r, str) for r in ranks):
            raise TypeError("ranks must be base64 strings or null")
        tokens = {i: base64.b64decode(r, validate=True) for i, r in enumerate(ranks) if r is not None}
        return cls(tokens, pattern, specials, name=name)

    def to_json(self) -> str:
        if self._json is None:  # immutable after construction; OpenAI vocabularies take ~0.2 s
            self._json = super().to_json()
        return self._json

    def __getstate__(self) -> dict:
        # for multiprocessing: the tiktoken object is rebuilt on demand in the child
        return {**self.__dict__, "_enc": None}

    def __repr__(self) -> str:
        return (f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"special_tokens={len(self.special_tokens)})")


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = "gpt4",
              special_tokens: Sequence[str] = SPECIAL_TOKENS, tie_break: str = "rustbpe",
              progress: bool = False) -> tuple[BPETokenizer, int]:
    """``BPETokenizer.train`` on an iterable of texts (no progress bar of its own over them), and the
    number of distinct pre-split chunks it counted (0: there was no text). Raises as ``train``."""
    from tqdm import tqdm

    pattern, n_merges = training_settings(vocab_size, pattern, len(special_tokens))
    if tie_break not in TIE_BREAKS:
        raise UserError(f"tie_break must be one of {', '.join(TIE_BREAKS)}, not {tie_break!r}")
    try:
        counts = count_chunks(texts, pattern)
    except UserError:  # a bad corpus, raised while reading: already says what is wrong
        raise
    except ValueError as e:
        raise UserError(f"split pattern {pattern!r} does not cover the text: {e}; a split pattern "
                        "must match every character (end it with an alternative such as |\\s+|.)") from None
    with tqdm(total=n_merges, desc="merging", unit=" merges", disable=not progress, leave=False) as bar:
        merges = train_merges(counts, n_merges, tie_break=tie_break, progress=bar.update)
    return BPETokenizer.from_merges(merges, pattern, special_tokens, name=f"bpe-{vocab_size}"), len(counts)
