"""Byte-level BPE training: the algorithm, written here.

Byte pair encoding (Sennrich, Haddow & Birch 2016, "Neural Machine Translation of Rare Words with
Subword Units", arXiv:1508.07909) in GPT-2's byte-level form (Radford et al. 2019): every text is
UTF-8 bytes, so the 256 byte values are the base vocabulary and nothing is ever out of vocabulary.

1. Pre-split: a regex cuts the text into chunks (words, numbers, punctuation runs, whitespace);
   merges never cross a chunk boundary. Each distinct chunk is kept once with its count, so the
   work below scales with the number of *distinct* chunks (~35k for the built-in corpus), not the
   text length.
2. Count every adjacent pair of ids in every distinct chunk, weighted by the chunk's count, and
   remember which chunks hold each pair.
3. Repeat until the vocabulary is full: take the most frequent pair (a, b), give it the next id
   ``256 + i`` and replace it in the chunks that hold it. Only pairs next to a replaced occurrence
   change count, so the counts are updated *incrementally* from those neighbours; a max-heap with
   lazy deletion finds the next best pair (an entry whose count went stale is re-pushed with its
   current count when it reaches the top).

Tie-breaking: among pairs with the same count the pair with the smallest ``(left id, right id)``
wins. This is the rule of both reference trainers (rustbpe's ``MergeJob`` ordering and Hugging Face
``tokenizers``' ``BpeTrainer``), but they number the 256 base tokens differently:

- ``"rustbpe"`` (default, also tiktoken's and minbpe's numbering): byte ``b`` has id ``b``.
- ``"hf"``: ``BpeTrainer`` with the ``ByteLevel`` alphabet numbers the base tokens in the order of
  the printable characters GPT-2's ``bytes_to_unicode`` maps them to: ``!`` (0x21) .. ``~``, then
  0xA1..0xAC, 0xAE..0xFF, then the remapped control/space bytes 0x00..0x20, 0x7F..0xA0, 0xAD. So
  a tie between, say, ``(" ", "t")`` and ``("h", "e")`` goes to ``("h", "e")`` under ``"hf"`` (space
  is late, as ``Ġ`` = U+0120) and to ``(" ", "t")`` under ``"rustbpe"`` (space = 32 is early).

Merged tokens get ids ``256, 257, ...`` in merge order under both rules, so the two rules differ
only when a tie involves base bytes of different rank; we train in the chosen numbering and
translate the merges back to byte ids (``256 + i`` for merge ``i``) at the end.

Pair counts are exact at every step (equal to a full recount), so with the same chunks, counts
and tie rule the merges are identical to both references (tested against both).

Example:
    >>> merges = train_merges({"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}, 3)
    >>> [(bytes([a]) if a < 256 else a, bytes([b]) if b < 256 else b) for a, b in merges]
    [(b'u', b'g'), (b'u', b'n'), (b'h', 256)]
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import regex

TIE_BREAKS = ("rustbpe", "hf")


def fix_surrogates(text: str) -> str:
    """``text`` with each lone surrogate (which has no UTF-8 form) replaced by U+FFFD, as
    tiktoken's ``encode`` does (through UTF-16, so a split surrogate pair is joined)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (``encoder.py`` in openai/gpt-2).

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, 0x7F-0xA0, 0xAD)
    map to U+0100 onwards in byte order. Hugging Face's ``ByteLevel`` uses the same map.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    moved = [b for b in range(256) if b not in keep]
    return {b: chr(b) if b in keep else chr(256 + moved.index(b)) for b in range(256)}


def _base_order(tie_break: str) -> list[int]:
    """byte -> id used while training, so that 'smallest pair' means the reference's order."""
    if tie_break == "rustbpe":
        return list(range(256))
    if tie_break == "hf":
        chars = bytes_to_unicode()
        by_char = sorted(range(256), key=lambda b: ord(chars[b]))  # BpeTrainer sorts its alphabet
        return [by_char.index(b) for b in range(256)]
    raise ValueError(f"tie_break must be one of {TIE_BREAKS}, not {tie_break!r}")


def count_chunks(texts: str | Iterable[str], pattern: str) -> Counter[str]:
    """Pre-split each text with ``pattern`` (``regex`` syntax) and count the distinct chunks.

    Each text is split on its own, as rustbpe's ``train_from_iterator`` does, so a chunk never
    spans two texts. Chunks are whole matches (as tiktoken's encoder splits), even if the pattern
    has groups. Returns chunk -> number of occurrences.

    Raises:
        ValueError: ``pattern`` is not a valid regex, or it does not match every character of a
            text (the chunks would not re-join to it, so training and encoding would drop text);
            the message quotes the first text dropped.
    """
    try:
        pat = regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError) as e:
        raise ValueError(f"invalid split pattern {pattern!r}: {e}") from None
    counts: Counter[str] = Counter()
    for t in [texts] if isinstance(texts, str) else texts:
        # findall returns whole matches (C speed, ~1M chunks/s) unless the pattern has groups
        chunks = pat.findall(t) if not pat.groups else [m.group() for m in pat.finditer(t)]
        # matches never overlap, so they re-join to the text exactly when their lengths add up
        if sum(map(len, chunks)) != len(t):
            raise ValueError(_first_gap(pat, t))
        counts.update(chunks)
    return counts


def _first_gap(pat: regex.Pattern, text: str) -> str:
    """Describe the first stretch of ``text`` that no match of ``pat`` covers."""
    pos, end = 0, len(text)
    for m in pat.finditer(text):
        if m.start() > pos:  # matches are in order: text[pos:m.start()] is skipped
            end = m.start()
            break
        pos = max(pos, m.end())
    return f"it drops {text[pos:end][:40]!r}{'...' if end - pos > 40 else ''} at character {pos}"


def train_merges(
    chunk_counts: Mapping[str | bytes, int],
    num_merges: int,
    tie_break: str = "rustbpe",
    progress: Callable[[int], None] | None = None,
) -> list[tuple[int, int]]:
    """Learn up to ``num_merges`` BPE merges from distinct chunks and their counts.

    Args:
        chunk_counts: chunk (str, taken as UTF-8, or bytes) -> count (> 0).
        num_merges: merges to learn; fewer are returned if every chunk becomes a single token
            first (no pair left to merge).
        tie_break: ``"rustbpe"`` or ``"hf"``: which reference's base-token numbering decides ties
            between equally frequent pairs (see the module docstring).
        progress: called with 1 after each merge (e.g. ``tqdm.update``).

    Returns:
        ``merges[i] = (left, right)``: token ``256 + i`` is token ``left`` followed by ``right``
        (ids < 256 are bytes).

    Raises:
        ValueError: negative ``num_merges`` or unknown ``tie_break``.
    """
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, not {num_merges}")
    order = _base_order(tie_break)
    words, freqs, pair_counts, where = _count_pairs(chunk_counts, order)
    # max-heap on count via negation; ties -> smallest (a, b) because tuples compare elementwise
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    get = pair_counts.get
    while len(merges) < num_merges and heap:
        negc, a, b = heapq.heappop(heap)
        pair = (a, b)
        cur = get(pair, 0)
        if -negc != cur:  # stale entry: the count fell since it was pushed
            if cur > 0:
                heapq.heappush(heap, (-cur, a, b))
            continue
        if cur <= 0:
            break
        new = 256 + len(merges)
        merges.append(pair)
        grown: set[tuple[int, int]] = set()  # pairs that gained occurrences: pushed afresh below
        for wi in where.pop(pair):
            w = words[wi]
            n = len(w)
            c = freqs[wi]
            i = 0
            out: list[int] = []
            # Rewrite the chunk left to right, replacing non-overlapping (a, b) and updating the
            # counts of the neighbouring pairs: (x, a) -> (x, new) and (b, y) -> (new, y). For
            # runs like "aaaa" the left neighbour is the token just written (possibly `new`),
            # which keeps the counts exact.
            while i < n:
                if w[i] == a and i + 1 < n and w[i + 1] == b:
                    if out:
                        pair_counts[out[-1], a] -= c
                        p = (out[-1], new)
                        pair_counts[p] = get(p, 0) + c
                        grown.add(p)
                        where.setdefault(p, set()).add(wi)
                    if i + 2 < n:
                        pair_counts[b, w[i + 2]] -= c
                        p = (new, w[i + 2])
                        pair_counts[p] = get(p, 0) + c
                        grown.add(p)
                        where.setdefault(p, set()).add(wi)
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            if len(out) != n:
                words[wi] = out
        del pair_counts[pair]
        for p in grown:
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p[0], p[1]))
        if progress is not None:
            progress(1)

    if tie_break == "rustbpe":
        return merges
    inverse = sorted(range(256), key=order.__getitem__)  # id -> byte
    return [(inverse[a] if a < 256 else a, inverse[b] if b < 256 else b) for a, b in merges]


def _count_pairs(chunk_counts: Mapping[str | bytes, int], order: list[int]):
    """``(words, freqs, pair_counts, where)``: each chunk of two or more bytes as ids in ``order``,
    its count, the weighted count of every adjacent pair, and pair -> indices of the words holding it."""
    words: list[list[int]] = []
    freqs: list[int] = []
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for chunk, c in chunk_counts.items():
        b = fix_surrogates(chunk).encode("utf-8") if isinstance(chunk, str) else chunk
        if len(b) < 2 or c <= 0:
            continue  # holds no pair; never changes
        w = [order[x] for x in b]
        wi = len(words)
        words.append(w)
        freqs.append(c)
        for pair in zip(w, w[1:], strict=False):
            pair_counts[pair] = pair_counts.get(pair, 0) + c
            where.setdefault(pair, set()).add(wi)
    return words, freqs, pair_counts, where


def merges_to_tokens(merges: Iterable[tuple[int, int]], max_bytes: int | None = None) -> list[bytes]:
    """The bytes of every token: ``tokens[i]`` for ids ``0 .. 255 + len(merges)``.

    Raises:
        ValueError: a merge refers to an id not defined before it, or (with ``max_bytes``) the tokens
            would hold more than ``max_bytes`` bytes in all (checked before each token is built).
    """
    tokens = [bytes([i]) for i in range(256)]
    total = 256
    for i, (a, b) in enumerate(merges):
        n = len(tokens)
        if not (0 <= a < n and 0 <= b < n):
            raise ValueError(f"merge {i} ({a}, {b}) refers to a token id not defined before it (< {n})")
        total += len(tokens[a]) + len(tokens[b])
        if max_bytes is not None and total > max_bytes:
            raise ValueError(f"the merges define tokens of more than {max_bytes:,} bytes in all "
                             f"(merge {i} makes a token of {len(tokens[a]) + len(tokens[b]):,} bytes)")
        tokens.append(tokens[a] + tokens[b])
    return tokens
