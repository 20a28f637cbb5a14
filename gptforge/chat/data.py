"""Conversations streamed from files: JSONL and Parquet (the Hugging Face datasets layout).

- ``.jsonl``: one JSON object per line with a ``"messages"`` field holding the conversation;
  blank lines are ignored; other fields are ignored too.
- ``.parquet``: a ``messages`` column of ``list<struct<role: string, content: string>>`` (for
  example a local download of SmolTalk). The file is read in row batches of ``batch_rows`` rows
  (``pyarrow.parquet.ParquetFile.iter_batches``, only that column), so memory stays at about one
  row group plus one batch whatever the file's size.

A spec is a file, a directory (every ``.jsonl`` / ``.parquet`` below it, in sorted order; a
downloaded dataset's directory may hold its test split too, so pass a glob such as
``data/train-*.parquet`` to take only some files) or a glob pattern, or a list of these.

Every row goes through ``check_conversation``. A bad row (invalid JSON, no ``messages`` field,
anything ``check_conversation`` refuses) is counted and skipped, and the first few reasons are kept
with their location, ``file:line`` for JSONL (lines counted from 1, as an editor shows them) and
``file:row N`` for Parquet (rows counted from 0, as pyarrow and pandas index them). With
``strict=True`` the first bad row raises ``UserError`` instead. Example::

    convs, stats = read_conversations("smoltalk/data/all/train-*.parquet")
    for conv in convs:
        ...
    print(stats.summary())  # "read 1000 rows from 2 files: 998 conversations, 2 skipped ..."
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gptforge.chat.conversation import check_conversation
from gptforge.data.corpus import find_files
from gptforge.errors import UserError

SUFFIXES = (".jsonl", ".parquet")
MAX_PROBLEMS = 5  # reasons kept in ReadStats.problems; the rest are only counted


@dataclass
class ReadStats:
    """What ``read_conversations`` has read so far; filled in as its iterator is consumed.

    Attributes:
        files: the files the spec resolved to, in reading order.
        rows_read: rows (JSONL lines that are not blank, Parquet rows) looked at, good and bad.
        rows_skipped: bad rows skipped.
        problems: ``"location: reason"`` of the first ``MAX_PROBLEMS`` bad rows.
    """

    files: list[Path] = field(default_factory=list)
    rows_read: int = 0
    rows_skipped: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def rows_ok(self) -> int:
        """Conversations yielded so far."""
        return self.rows_read - self.rows_skipped

    def summary(self) -> str:
        """One line, then one indented line per kept problem, for printing to a person."""
        nfiles = len(self.files)
        line = (f"read {self.rows_read} rows from {nfiles} file{'s' * (nfiles != 1)}: "
                f"{self.rows_ok} conversations, {self.rows_skipped} skipped")
        lines = [line] + [f"  {p}" for p in self.problems]
        if self.rows_skipped > len(self.problems):
            lines.append(f"  ... and {self.rows_skipped - len(self.problems)} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def resolve_files(spec: str | Path | Iterable[str | Path]) -> list[Path]:
    """The ``.jsonl`` / ``.parquet`` files a spec names, in reading order (``data.corpus.find_files``).

    Raises:
        UserError: a path does not exist, a file has another suffix, or a directory or glob holds
            no such file.
    """
    specs = [spec] if isinstance(spec, str | Path) else spec
    files = [f for s in specs for f in find_files(str(s), SUFFIXES, "conversations")]
    for f in files:
        if f.suffix not in SUFFIXES:  # a file named on its own
            raise UserError(f"{f}: cannot read conversations from a {f.suffix or 'suffix-less'} file "
                            f"(expected {' or '.join(SUFFIXES)})")
    return files


def read_conversations(spec: str | Path | Iterable[str | Path], *, strict: bool = False,
                       batch_rows: int = 1024) -> tuple[Iterator[list[dict]], ReadStats]:
    """Stream the valid conversations of the files ``spec`` names.

    The spec is resolved at once (so a missing path fails here, not at the first ``next``); the
    files are read lazily as the iterator is consumed, and ``stats`` is updated as it goes.

    Args:
        spec: file, directory, glob, or a list of them (see the module docstring).
        strict: raise on the first bad row instead of skipping it.
        batch_rows: Parquet rows decoded at a time (memory: about this many conversations).

    Returns:
        ``(conversations, stats)``: an iterator of normalised conversations (see
        ``check_conversation``) and the ``ReadStats`` it fills.

    Raises:
        UserError: from ``resolve_files``; a Parquet file that cannot be opened or has no
            ``messages`` column; a file that cannot be read; with ``strict``, the first bad row,
            as ``"file:line: reason"``.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, not {batch_rows}")
    stats = ReadStats(files=resolve_files(spec))

    def rows() -> Iterator[list[dict]]:
        for path in stats.files:
            reader = _jsonl_rows(path) if path.suffix == ".jsonl" else _parquet_rows(path, batch_rows)
            for where, messages, reason in reader:
                stats.rows_read += 1
                if reason is None:
                    try:
                        yield check_conversation(messages)
                        continue
                    except ValueError as e:
                        reason = str(e)
                if strict:
                    raise UserError(f"{where}: {reason}")
                stats.rows_skipped += 1
                if len(stats.problems) < MAX_PROBLEMS:
                    stats.problems.append(f"{where}: {reason}")

    return rows(), stats


def _jsonl_rows(path: Path) -> Iterator[tuple[str, object, str | None]]:
    """``(location, messages, None)`` per line, or ``(location, None, reason)`` for a bad line."""
    try:
        f = open(path, "rb")  # bytes: a line of invalid UTF-8 is one bad row, not a dead file
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield where, None, "not valid UTF-8"
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, None, f"invalid JSON ({e.msg} at column {e.colno})"
                continue
            except RecursionError:
                yield where, None, "invalid JSON (nested too deeply)"
                continue
            if not isinstance(obj, dict):
                yield where, None, f"not a JSON object (got {type(obj).__name__})"
            elif "messages" not in obj:
                yield where, None, "no 'messages' field"
            else:
                yield where, obj["messages"], None


def _parquet_rows(path: Path, batch_rows: int) -> Iterator[tuple[str, object, str | None]]:
    """``(location, messages, None)`` per Parquet row, decoding ``batch_rows`` rows at a time."""
    import pyarrow.parquet as pq  # imported here: only Parquet input needs it

    try:
        pf = pq.ParquetFile(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read as Parquet ({e})") from None
    except Exception as e:  # pyarrow raises ArrowInvalid (a ValueError) for a file that is not Parquet
        raise UserError(f"{path}: not a Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if "messages" not in names:
        raise UserError(f"{path}: no 'messages' column (columns: {', '.join(names) or 'none'})")
    # one batch as Python objects at a time: the to_pylist copy is the big allocation
    batches = pf.iter_batches(batch_size=batch_rows, columns=["messages"])
    messages = (m for batch in batches for m in batch.column(0).to_pylist())
    for row, m in enumerate(messages):
        yield f"{path}:row {row}", m, None
