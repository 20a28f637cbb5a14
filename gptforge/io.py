"""Files written whole or not at all, and versioned JSON files read back with checks.

Every file gptforge writes for later (checkpoints, pointers, tokenizers, shard metadata, reports)
goes through ``atomic_write`` / ``atomic_open``: the bytes go to a temporary file in the same
directory, are fsynced and renamed over the target, so a crash or Ctrl-C leaves either the old
file or the new one, never half of one, and never a stray temporary file after an error.

JSON files that carry a format name and version (``write_json(..., fmt="gptforge.checkpoint",
version=1)``) are read back with ``read_json``, which names the path in every error, reads only
regular files of at most ``MAX_JSON_BYTES`` (a FIFO, a device or a sparse 8 GB file in a run or
shard directory is refused, not waited on or read into memory) and checks a pydantic schema.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

from gptforge.errors import UserError

#: the largest JSON file ``read_json`` reads: a trainer.json with the RNG states of 1,000
#: processes or the tokenizer.json of a 200k vocabulary are a few MB
MAX_JSON_BYTES = 64 << 20


def fsync(path: str | os.PathLike) -> None:
    """Flush a file or directory to disk (ignored where the filesystem cannot fsync a directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
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


def empty_out_dir(out: str | os.PathLike | None, kind: str) -> Path:
    """An experiment's output folder: ``out``, or ``runs/KIND-YYYYmmdd-HHMMSS`` when it is empty or
    None; not created here (the caller checks its inputs first).

    Raises:
        UserError: the folder exists and is not empty (a file there would be overwritten).
    """
    path = Path(out or f"runs/{kind}-{datetime.now():%Y%m%d-%H%M%S}")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path}: exists and is not an empty folder; choose another --out")
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
    JSON has no NaN or infinity: such a float (the bpb of a split without text bytes, the
    accuracy of a task with no items) is written as null."""
    head = {"format": fmt, "version": version} if fmt else {}
    return atomic_write(path, json.dumps(_finite({**head, **obj}), indent=1, allow_nan=False) + "\n")


def _finite(x):
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def read_file(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``; with ``max_bytes``, only of a regular file of at most that many bytes.

    Raises:
        UserError: missing, a directory or unreadable; with ``max_bytes``, also not a regular file
            (a FIFO would block, a device never end) or larger. The message names the path and ``what``.
    """
    p = Path(path)
    try:
        return p.read_bytes() if max_bytes is None else _read_regular(p, what, max_bytes)
    except FileNotFoundError:
        raise UserError(f"{p}: missing ({what} expected here)") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, not a {what}") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None


def _read_regular(p: Path, what: str, max_bytes: int) -> bytes:
    with open(os.open(p, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # a FIFO opens without a writer
        st = os.fstat(f.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{p}: not a regular file (a FIFO, device or socket); a {what} expected here")
        data = f.read(st.st_size + 1) if st.st_size <= max_bytes else b""
        # grown since fstat, or a /proc file (size 0): read on, 1 MiB at a time, up to the bound
        while st.st_size < len(data) <= max_bytes and (more := f.read(1 << 20)):
            data += more
    if st.st_size > max_bytes or len(data) > max_bytes:
        raise UserError(f"{p}: {max(st.st_size, len(data)):,} bytes, more than a {what} can be "
                        f"(at most {max_bytes:,})")
    return data


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
              what: str = "file", schema=None):
    """A JSON object from ``path`` (a regular file of at most ``MAX_JSON_BYTES``); with ``fmt``, its
    "format" must be ``fmt`` and "version" one of ``versions``; with ``schema`` (see ``validate``),
    the object it validates to is returned.

    Raises:
        UserError: missing, a directory, not a regular file, too large, unreadable, not UTF-8 JSON,
            not an object, another format or version, or not valid for ``schema``; the message
            names the path.
    """
    p = Path(path)
    raw = read_file(p, what, MAX_JSON_BYTES)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{p}: corrupt {what} (not JSON: {str(e)[:80]})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{p}: corrupt {what} (not a JSON object)")
    if fmt is not None:
        if obj.get("format") != fmt:
            raise UserError(f"{p}: not a {what} (format {str(obj.get('format'))[:40]!r}, expected {fmt!r})")
        if type(obj.get("version")) is not int or obj["version"] not in versions:
            raise UserError(f"{p}: {what} version {repr(obj.get('version'))[:40]} is not supported "
                            f"(this gptforge reads {', '.join(map(str, versions))})")
    return obj if schema is None else validate(schema, obj, p, what)


def validate(schema, obj, path: str | os.PathLike, what: str = "file"):
    """``obj`` validated by ``schema`` (a pydantic model class or ``TypeAdapter``), its first error
    as one line: ``PATH: corrupt WHAT ("splits.val.tokens" must be an integer >= 0, not -3)``. A
    model field's ``description`` says what it must be; otherwise pydantic's message does.

    Raises:
        UserError: ``obj`` does not validate.
    """
    from pydantic import BaseModel, ValidationError  # here, not at the top: `gptforge --help` stays fast

    try:
        return schema.model_validate(obj) if isinstance(schema, type) else schema.validate_python(obj)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc, want, model = err["loc"], None, schema
        for key in loc:  # the description of the field at loc, through nested models
            field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) \
                else None
            want, model = (field.description, field.annotation) if field else (None, None)
        got = "missing" if err["type"] == "missing" else repr(err["input"])[:60]
        if not loc:  # a check across fields: its own message
            detail = str(err.get("ctx", {}).get("error", err["msg"]))
        elif want:
            detail = f'"{".".join(map(str, loc))}" must be {want}, not {got}'
        else:
            detail = f'{".".join(map(str, loc))}={got}: {err["msg"]}'
        raise UserError(f"{Path(path)}: corrupt {what} ({detail})") from None
