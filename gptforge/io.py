"""Files written whole or not at all, and versioned JSON files read back with checks.

Every file gptforge writes for later (checkpoints, pointers, tokenizers, shard metadata, reports)
goes through ``atomic_write`` / ``atomic_open``: the bytes go to a temporary file in the same
directory, are fsynced and renamed over the target, so a crash or Ctrl-C leaves either the old
file or the new one, never half of one, and never a stray temporary file after an error.

JSON files that carry a format name and version (``write_json(..., fmt="gptforge.checkpoint",
version=1)``) are read back with ``read_json``, which names the path in every error.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from gptforge.errors import UserError


def fsync(path: str | os.PathLike) -> None:
    """Flush a file or directory to disk (ignored where the filesystem cannot fsync a directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_target(path: str | os.PathLike) -> Path:
    """``path`` if a file can be written there (by ``atomic_open``): for a command to check its
    ``--out`` before its work rather than after.

    Raises:
        UserError: the target is a directory, exists but is not a regular file (a symlink, FIFO or
            device: renaming over it would replace it, not write into it), or its folder is missing
            or not writable; the message names it.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a file name")
    with contextlib.suppress(OSError):  # absent (or unreadable: writing will say why)
        if not stat.S_ISREG(os.lstat(path).st_mode):
            kind = "a symlink" if path.is_symlink() else "not a regular file (a FIFO, socket or device)"
            raise UserError(f"{path}: exists and is {kind}; gptforge writes only regular files, "
                            "give another name")
    if not path.parent.is_dir():
        if path.parent.exists():
            raise UserError(f"{path}: cannot write ({path.parent} is not a folder)")
        raise UserError(f"{path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write (the folder {path.parent} is not writable)")
    return path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """``with atomic_open(p, "wb") as f: f.write(...)``: ``p`` appears complete or not at all.

    Raises:
        UserError: ``check_target`` refuses the target, or the temporary file cannot be made.
    """
    path = check_target(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:
        raise UserError(f"{path}: the folder {path.parent} does not exist") from None
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with open(fd, mode, encoding=None if "b" in mode else encoding,
                  newline=None if "b" in mode else "\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: dict, fmt: str | None = None,
               version: int | None = None) -> Path:
    """Write ``obj`` as indented JSON atomically, with ``{"format": fmt, "version": version}`` first.

    Raises:
        ValueError: a NaN or infinity in ``obj`` (not JSON; the caller has a bug).
    """
    head = {"format": fmt, "version": version} if fmt else {}
    return atomic_write(path, json.dumps({**head, **obj}, indent=1, allow_nan=False) + "\n")


def read_file(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of ``path``.

    Raises:
        UserError: missing, a directory or unreadable; the message names the path and ``what``.
    """
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{p}: missing ({what} expected here)") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, not a {what}") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of ``path``.

    Raises:
        UserError: missing, a directory, unreadable, or not UTF-8; the message names the path.
    """
    raw = read_file(path, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{Path(path)}: not UTF-8 text (byte {e.start}); a {what} expected here") from None


def read_json(path: str | os.PathLike, fmt: str | None = None, versions: tuple[int, ...] = (1,),
              what: str = "file") -> dict:
    """A JSON object from ``path``; with ``fmt``, its "format" must be ``fmt`` and "version" one of
    ``versions``.

    Raises:
        UserError: missing, a directory, unreadable, not UTF-8 JSON, not an object, or another
            format or version; the message names the path.
    """
    p = Path(path)
    raw = read_file(p, what)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{p}: corrupt {what} (not JSON: {str(e)[:80]})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{p}: corrupt {what} (not a JSON object)")
    if fmt is not None:
        if obj.get("format") != fmt:
            raise UserError(f"{p}: not a {what} (format {obj.get('format')!r}, expected {fmt!r})")
        if obj.get("version") not in versions:
            raise UserError(f"{p}: {what} version {obj.get('version')!r} is not supported "
                            f"(this gptforge reads {', '.join(map(str, versions))})")
    return obj
