"""Where SFT conversations come from: a spec of built-in mixtures and files, split into train and test.

A spec is a comma-separated list; each item is a built-in mixture (``arithmetic``, ``spelling``,
``identity``, ``smalltalk``, ``gsm8k``; see gptforge.chat.mixtures), optionally with a count of
train conversations (``arithmetic:2000``; a generated mixture's test split gets a tenth of that, a
finite set's test split each of its items once; without a count, ``DEFAULT_COUNTS``), or conversation
files (JSONL with ``messages``, Parquet in the Hugging Face layout; a file, directory or glob; see
gptforge.chat.data). Mixtures have their own disjoint train/test splits; a file's test split is
every 20th valid conversation (deterministic).

    >>> train = conversations("arithmetic:100,identity", "train", seed=0)
"""

from __future__ import annotations

from collections.abc import Iterator

from gptforge.chat.data import ReadStats, read_conversations
from gptforge.chat.mixtures import MIXTURES, mixture
from gptforge.errors import UserError

FILE_TEST_EVERY = 20  # a file's test split: every 20th valid conversation
# train size when a mixture is named without a count. identity and smalltalk are repeated up to a
# sixth of the speedrun's mix (arithmetic:20000,spelling:10000): at their natural size (~650 and
# ~370 items, 3%) a greeting drew a tool call; a finite set's test split is each item once
DEFAULT_COUNTS = {"arithmetic": 4000, "spelling": 4000, "identity": 4000, "smalltalk": 2000}
FINITE = ("identity", "smalltalk")


def parse_spec(spec: str) -> list[tuple[str, int | None]]:
    """``"arithmetic:2000,chats.jsonl"`` -> ``[("arithmetic", 2000), ("chats.jsonl", None)]``.

    Raises:
        UserError: an empty spec or item, or a count that is not a positive integer.
    """
    items = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise UserError(f"--data {spec!r}: an empty item; give mixtures and files separated by commas")
        name, _, count = item.partition(":")
        if name not in MIXTURES:  # a path (which may hold a ':')
            items.append((item, None))
            continue
        if count and not (count.isdigit() and int(count) > 0):
            raise UserError(f"--data: {item!r}: the count after ':' must be a positive integer")
        items.append((name, int(count) if count else None))
    return items


def conversations(spec: str, split: str, seed: int = 0, strict: bool = False,
                  stats: list[ReadStats] | None = None) -> Iterator[list[dict]]:
    """The conversations of ``spec``'s ``split`` ("train" or "test"), item by item. File read
    statistics (rows read and skipped, with file:line) are appended to ``stats`` when given.

    Raises:
        UserError: a bad spec, a missing file, or (``strict``) a bad row.
    """
    for name, n in parse_spec(spec):
        if name in MIXTURES:
            n = DEFAULT_COUNTS.get(name) if n is None else n
            if name in FINITE and split == "test":
                n = None
            elif n is not None and split == "test":  # the test split is a tenth of the train size
                n = max(1, n // 10)
            yield from mixture(name, split, n, seed)
            continue
        convs, st = read_conversations(name, strict=strict)
        if stats is not None:
            stats.append(st)
        for i, c in enumerate(convs):  # a file has no count (parse_spec): all of its split
            if (i % FILE_TEST_EVERY == 0) == (split == "test"):
                yield c
