"""Corpora as a stream of text pieces, so a corpus larger than RAM can be tokenized.

A corpus is one of:

- ``"shakespeare"``: the built-in corpus (``gptforge.data.shakespeare``), one document per play,
  split train/val by whole plays;
- a path to a ``.txt`` file: one document. Its last ``val_fraction`` of bytes (moved forward to a
  character boundary) is validation, as nanoGPT splits tiny shakespeare (first 90% train);
- a path to a ``.jsonl`` file: one document per line, taken from the line's ``"text"`` field;
- a path to a ``.parquet`` file: one document per row, taken from its ``text`` column, read in
  batches of rows (``PARQUET_BATCH_ROWS``) within each row group, so a file larger than RAM streams.
  FineWeb, FineWeb-Edu and most Hugging Face text datasets come in this layout;
- a directory (every ``*.txt`` and ``*.parquet`` below it) or a glob pattern: one document per text
  file, one per row of each Parquet or line of each JSONL file, files in sorted order. A file reached
  twice (through a symlink, a symlink loop or a hard link) is read once, at its first path.

``text_column`` (``--text-column``) names the JSONL field and the Parquet column; "text" by default.

With several documents, document ``i`` (counting from 0 across the corpus) is validation when
``floor((i+1)*f) > floor(i*f)`` for ``f = val_fraction``: every 10th document for f = 0.1,
deterministic and streamable.

Files are read in pieces of about 4 MiB (``chunk_bytes``) and decoded as strict UTF-8: invalid bytes
raise ``UserError`` naming the file and byte offset unless ``errors="replace"``. JSONL text that holds
a lone surrogate (``"\ud800"``, valid JSON but not Unicode) is treated the same way: ``UserError``
naming the file and line, or U+FFFD with ``errors="replace"``.

Pieces are cut where the split patterns of ``gptforge.tokenizer`` (gpt2, gpt4, o200k) never put a
chunk across the cut, so encoding the pieces one by one gives the same ids as encoding the whole
file: after a newline that has a non-space character on each side, else before a space that
follows a non-space character, else (no such place in ``chunk_bytes``) after any newline, and
only as a last resort at a character boundary.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import math
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gptforge.data import shakespeare
from gptforge.errors import UserError
from gptforge.tokenizer.train import fix_surrogates

CHUNK_BYTES = 4 << 20
PARQUET_BATCH_ROWS = 1024
BUILTIN = ("shakespeare",)
_SURROGATE = re.compile("[\ud800-\udfff]")
# Safe places to cut a piece (see the module docstring); bytes patterns, so \s is ASCII whitespace.
# "X\nY" with X, Y not whitespace: a whitespace run before or after the cut would be one chunk whole
# but two chunks cut (gpt2's \s+(?!\S), gpt4's \s*[\r\n]).
_NEWLINE_CUT = re.compile(rb"[^\s]\n(?=[^\s])")
# "X Y" with X not whitespace, cut before the space: no split pattern chunk runs on from a
# non-space character into a following space, and the chunk after starts at the space either way.
_SPACE_CUT = re.compile(rb"[^\s](?= )")


@dataclass
class Piece:
    """A run of text from one document, bound for one split.

    ``doc_start`` marks the first piece of a document: the shard writer puts the end-of-text
    token before it unless it is the first piece of its split.
    """

    split: str  # "train" | "val"
    text: str
    doc_start: bool


@dataclass
class Corpus:
    """A corpus spec resolved to its sources. Iterate ``pieces()`` to stream it."""

    spec: str
    sources: list[Path] = field(default_factory=list)  # empty for built-in corpora
    text_column: str = "text"  # the JSONL field / Parquet column holding the text
    sha256: str | None = None  # of all bytes read, in order; set once pieces() is exhausted
    bytes_read: int = 0

    @property
    def builtin(self) -> bool:
        return not self.sources

    @property
    def single_document(self) -> bool:
        """One text file: split by bytes, no document separators needed."""
        return len(self.sources) == 1 and self.sources[0].suffix not in (".jsonl", ".parquet")

    def total_bytes(self) -> int:
        """Bytes to read (for progress bars)."""
        if self.builtin:
            return shakespeare.SIZE_BYTES
        return sum(_parquet_text_bytes(p, self.text_column) if p.suffix == ".parquet" else p.stat().st_size
                   for p in self.sources)

    def pieces(self, val_fraction: float = 0.1, errors: str = "strict",
               on_bytes: Callable[[int], None] | None = None,
               chunk_bytes: int | None = None) -> Iterator[Piece]:
        """Stream the corpus as ``Piece``s. ``on_bytes(n)`` is called as n raw bytes are consumed.

        ``chunk_bytes``: bytes read at a time from a text file (default ``CHUNK_BYTES``, looked up
        at call time); pieces are at most about this long (more only where no character boundary
        is near), cut at safe places (module docstring).

        Raises:
            UserError: bad ``val_fraction``, unreadable file, invalid UTF-8 or JSONL, a lone
                surrogate in JSONL text (``errors="strict"``).
        """
        if not 0.0 < val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in (0, 1), not {val_fraction}")
        h = hashlib.sha256()
        self.bytes_read = 0

        def consumed(b: bytes):
            h.update(b)
            self.bytes_read += len(b)
            if on_bytes:
                on_bytes(len(b))

        if self.builtin:
            for name, text in shakespeare.plays("all"):
                consumed(text.encode("utf-8"))
                yield Piece("val" if name in shakespeare.VAL_PLAYS else "train", text, True)
        elif self.single_document:
            path = self.sources[0]
            size = path.stat().st_size
            cut = _char_boundary(path, int(size * (1.0 - val_fraction)))
            first = {"train": True, "val": True}
            for offset, text in _read_text(path, errors, consumed, cut=cut, chunk_bytes=chunk_bytes):
                split = "train" if offset < cut else "val"
                yield Piece(split, text, first[split])
                first[split] = False
        else:
            docs = 0
            for path in self.sources:
                if path.suffix in (".jsonl", ".parquet"):
                    read = _read_jsonl if path.suffix == ".jsonl" else _read_parquet
                    for text in read(path, self.text_column, errors, consumed):
                        yield Piece(_doc_split(docs, val_fraction), text, True)
                        docs += 1
                else:
                    split = _doc_split(docs, val_fraction)
                    for i, (_, text) in enumerate(_read_text(path, errors, consumed,
                                                             chunk_bytes=chunk_bytes)):
                        yield Piece(split, text, i == 0)
                    docs += 1
        self.sha256 = h.hexdigest()


def open_corpus(spec: str, text_column: str = "text") -> Corpus:
    """Resolve ``spec`` (built-in name, file, directory or glob) to a ``Corpus``.

    Raises:
        UserError: from ``find_files`` (nothing at ``spec``, not a regular file, no files to read).
    """
    if spec in BUILTIN:
        return Corpus(spec)
    what = f"a corpus file, directory or glob, or {' or '.join(BUILTIN)}"
    return Corpus(spec, find_files(spec, (".txt", ".parquet"), what, glob_filter=False), text_column)


def find_files(spec: str, suffixes: tuple[str, ...], what: str, glob_filter: bool = True) -> list[Path]:
    """The files ``spec`` names, in reading order: a file itself (whatever its suffix: the caller
    decides), or the files with one of ``suffixes`` below a directory or matched by a glob pattern
    (with ``glob_filter=False``, every file the glob matches), sorted. Regular files only (FIFOs and
    devices are left out), and each once: paths reaching one file (through a symlink, a loop of them,
    or a hard link) keep the first in sorted order, so that a document is read once and never lands
    in both splits. ``what`` names what was expected, for the error message.

    Raises:
        UserError: nothing exists at ``spec`` (and it is no glob), it is not a regular file (a FIFO,
            a device), or a directory or glob holds no such file.
    """
    p, kinds = Path(spec), ", nor ".join(f"{s} files" for s in suffixes)
    if p.is_file():
        return [p]
    if p.is_dir():
        if not (files := _unique_files(f for f in p.rglob("*") if f.suffix in suffixes)):
            raise UserError(f"{spec}: directory holds no {kinds}")
        return files
    if p.exists():
        raise UserError(f"{spec}: is {_file_kind(p)}, not a regular file")
    if not globlib.has_magic(spec):
        raise UserError(f"{spec}: no such file or directory ({what} expected)")
    matches = (Path(f) for f in globlib.glob(spec, recursive=True))
    if not (files := _unique_files(f for f in matches if not glob_filter or f.suffix in suffixes)):
        raise UserError(f"{spec}: pattern matches no {kinds if glob_filter else 'files'}")
    return files


def _unique_files(paths) -> list[Path]:
    """The regular files among ``paths``, sorted, each file once (``find_files``)."""
    seen, files = set(), []
    for f in sorted(paths):
        try:
            st = f.stat()
        except OSError:  # a dangling symlink, or a loop too deep to resolve
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            files.append(f)
    return files


def _file_kind(p: Path) -> str:
    mode = p.stat().st_mode
    return ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else
            "not a regular file")


def _doc_split(i: int, f: float) -> str:
    return "val" if math.floor((i + 1) * f) > math.floor(i * f) else "train"


def _char_boundary(path: Path, cut: int) -> int:
    """Move byte offset ``cut`` forward past UTF-8 continuation bytes (0b10xxxxxx)."""
    with open(path, "rb") as f:
        f.seek(cut)
        tail = f.read(4)
    return cut + next((k for k, b in enumerate(tail) if b & 0xC0 != 0x80), len(tail))


def _decode(data: bytes, path: Path, offset: int, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: invalid UTF-8 at byte offset {offset + e.start} "
                        "(pass --errors replace to substitute U+FFFD)") from None


def _safe_cut(data: bytes) -> int:
    """Where to end a piece of ``data`` (not the end of the file): see the module docstring."""
    for pat in (_NEWLINE_CUT, _SPACE_CUT):
        # the last 64 KiB first: in ordinary text a safe place is a few bytes from the end
        for start in (max(0, len(data) - (64 << 10)), 0):
            if ends := [m.end() for m in pat.finditer(data, start)]:
                return ends[-1]
    if (nl := data.rfind(b"\n")) != -1:
        return nl + 1
    # no whitespace at all: back off to a character boundary (a UTF-8 lead byte)
    end = len(data) - 1
    while end > 0 and data[end] & 0xC0 == 0x80:
        end -= 1
    return end


def _read_text(path: Path, errors: str, consumed: Callable[[bytes], None],
               cut: int | None = None, chunk_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """Yield (byte offset, text) pieces of ``path`` of about ``chunk_bytes``, cut at safe places
    (``_safe_cut``) and exactly at ``cut``."""
    offset, pending = 0, b""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        while True:
            size = chunk_bytes or CHUNK_BYTES
            block = f.read(size)
            data = pending + block
            if not data:
                return
            end = len(data)
            if cut is not None and offset < cut < offset + end:
                end = cut - offset
            elif len(block) == size:  # maybe more to come: cut where no character or chunk is split
                end = _safe_cut(data)
            chunk, pending = data[:end], data[end:]
            if chunk:
                consumed(chunk)
                yield offset, _decode(chunk, path, offset, errors)
                offset += len(chunk)


def _read_jsonl(path: Path, text_column: str, errors: str,
                consumed: Callable[[bytes], None]) -> Iterator[str]:
    offset = 0
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            consumed(raw)
            line = _decode(raw, path, offset, errors)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            except (ValueError, RecursionError) as e:  # an integer too long, nesting too deep
                raise UserError(f"{path}:{lineno}: not valid JSON ({type(e).__name__})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(text_column), str):
                raise UserError(f"{path}:{lineno}: expected an object with a string \"{text_column}\" field")
            yield _no_surrogates(obj[text_column], path, lineno, errors)


def _parquet_file(path: Path, text_column: str):
    """(pyarrow ParquetFile, index of ``text_column``), checked.

    Raises:
        UserError: not a Parquet file, or no string column ``text_column``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None
    schema = pf.schema_arrow
    if text_column not in schema.names:
        raise UserError(f"{path}: no column {text_column!r} (columns: {', '.join(schema.names)}); "
                        "name the text column with --text-column")
    kind = schema.field(text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"{path}: column {text_column!r} holds {kind}, not strings")
    return pf, pf.schema.names.index(text_column)  # top-level strings: one leaf column each


def _parquet_text_bytes(path: Path, text_column: str) -> int:
    """The text column's uncompressed size from the file's metadata (progress bars only)."""
    pf, j = _parquet_file(path, text_column)
    md = pf.metadata
    return sum(md.row_group(i).column(j).total_uncompressed_size for i in range(md.num_row_groups))


def _read_parquet(path: Path, text_column: str, errors: str,
                  consumed: Callable[[bytes], None]) -> Iterator[str]:
    """The ``text_column`` of each row, streamed a batch of rows at a time within each row group
    (only that column is read); null rows are skipped. The strings are decoded here, so that invalid
    UTF-8 is treated as in text files (``errors``)."""
    import pyarrow as pa

    pf, _ = _parquet_file(path, text_column)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_column]):
            for raw in batch.column(0).cast(pa.large_binary()).to_pylist():
                row += 1
                if raw is None:
                    continue
                consumed(raw)
                try:
                    yield raw.decode("utf-8", errors=errors)
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}: row {row}: invalid UTF-8 at byte {e.start} of its text (pass "
                                    "--errors replace to substitute U+FFFD)") from None
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path}: cannot read Parquet ({e})") from None


def _no_surrogates(text: str, path: Path, lineno: int, errors: str) -> str:
    """JSON may escape a lone surrogate ("\\ud800"), which no UTF-8 encoder accepts: raise a
    UserError naming the line (strict) or substitute U+FFFD (replace). Pairs were already joined
    into one character by ``json.loads``, so every surrogate left is a lone one."""
    if text.isascii() or (m := _SURROGATE.search(text)) is None:  # isascii: the common case, no search
        return text
    if errors != "replace":
        raise UserError(f"{path}:{lineno}: the \"text\" field holds a lone surrogate "
                        f"(U+{ord(m.group()):04X}) at character {m.start()}, which is not valid Unicode "
                        "(pass --errors replace to substitute U+FFFD)")
    return fix_surrogates(text)

