"""Token shards: a corpus tokenized into flat arrays that numpy can memory-map.

``prepare()`` writes, into one directory:

- ``train.bin`` and ``val.bin``: token ids, native little-endian ``uint16`` when the vocabulary has
  at most 65,536 ids, else ``uint32``; documents separated by the end-of-text token;
- ``tokenizer.json``: a copy of the tokenizer, so the directory is self-contained;
- ``meta.json``: format version, dtype, the tokenizer's identity (kind, vocab size, sha256), the
  corpus spec and sha256, and token, byte and document counts and the largest id per split.

The directory is written all-or-nothing: everything is built in a hidden temporary directory
beside it (``.NAME.XXXXXXXX.tmp``), which is renamed to ``NAME`` only once complete. A previous
shard directory at ``NAME`` is replaced only then, so a failed or interrupted ``prepare`` leaves
it untouched (a crash at worst leaves the temporary directory behind, never a mixed directory).

``open_shards`` trusts nothing in the directory: ``meta.json`` is checked against a schema
(``ShardMeta``: types, ranges, dtype, plain file names), the file sizes against it and the ids
against the vocabulary.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from gptforge import __version__
from gptforge.data.corpus import Piece, open_corpus
from gptforge.errors import UserError
from gptforge.io import MAX_JSON_BYTES, read_file, read_json, write_json
from gptforge.tokenizer import CharTokenizer, Tokenizer, load_tokenizer

FORMAT = "gptforge.shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
#: the largest vocabulary a shard can hold: uint32 ids
MAX_VOCAB = 1 << 32
#: what a shard directory may hold; ``prepare`` refuses to replace a directory holding anything
#: else (it would be deleted). ``*.tmp`` are leftovers of gptforge versions that wrote in place.
SHARD_FILES = frozenset({"meta.json", "tokenizer.json", "train.bin", "val.bin", "meta.json.tmp",
                         "tokenizer.json.tmp", "train.bin.tmp", "val.bin.tmp"})
#: ``open_shards`` reads whole shard files up to this size to check every id against the
#: vocabulary (~0.1 s); larger ones are checked by the recorded ``max_id`` plus their first and
#: last ``SCAN_BYTES``.
FULL_SCAN_BYTES = 256 << 20
SCAN_BYTES = 16 << 20


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 if every id fits (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


# --- workers: each process loads the tokenizer once -------------------------------------------
_worker_tok: Tokenizer | None = None
_worker_token_bytes: np.ndarray | None = None


def _init_worker(tokenizer_json: str):
    global _worker_tok, _worker_token_bytes
    _worker_tok = load_tokenizer(tokenizer_json)
    _worker_token_bytes = _worker_tok.token_bytes().astype(np.int64)


def _encode_piece(piece: Piece) -> tuple[str, bool, np.ndarray, int]:
    assert _worker_tok is not None and _worker_token_bytes is not None
    try:
        ids = _worker_tok.encode_ordinary(piece.text)
    except ValueError as e:
        raise UserError(f"cannot tokenize the corpus: {e}") from None
    arr = np.asarray(ids, dtype=shard_dtype(_worker_tok.vocab_size))
    nbytes = len(piece.text.encode("utf-8"))
    # A split pattern that does not match every character makes tiktoken drop the rest silently;
    # the byte count of the tokens catches that (one vectorised lookup per piece).
    if (decoded := int(_worker_token_bytes[arr].sum())) != nbytes:
        raise UserError(f"the tokenizer drops text: {nbytes} bytes of corpus encode to tokens of "
                        f"{decoded} bytes (its split pattern does not match every character)")
    return piece.split, piece.doc_start, arr, nbytes


def resolve_tokenizer(spec: str, corpus_spec: str, errors: str = "strict",
                      text_column: str = "text") -> Tokenizer:
    """``"char"`` trains a char tokenizer on the whole corpus (nanoGPT's convention: the
    vocabulary is every character in the text), with ``<|endoftext|>`` only when the corpus has
    several documents to separate; anything else is a path for ``load_tokenizer``."""
    if spec == "char":
        corpus = open_corpus(corpus_spec, text_column)
        tok = CharTokenizer.train((p.text for p in corpus.pieces(errors=errors)), specials=())
        return tok if corpus.single_document else CharTokenizer(tok.chars)
    return load_tokenizer(spec)


def prepare(corpus_spec: str, tokenizer: Tokenizer, out_dir: str | os.PathLike, val_fraction: float = 0.1,
            errors: str = "strict", workers: int | None = None, progress: bool = True,
            chunk_bytes: int | None = None, text_column: str = "text") -> dict:
    """Tokenize ``corpus_spec`` with ``tokenizer`` into shards in ``out_dir``; return the meta dict.

    All or nothing: the shards are built in a temporary directory beside ``out_dir`` and renamed
    to it when complete; an existing shard directory there is replaced only then.

    Args:
        workers: processes that encode in parallel (default: one per core, up to 4); 1 encodes
            in this process.
        chunk_bytes: bytes per piece read from text files (default ``corpus.CHUNK_BYTES``).
        text_column: the JSONL field / Parquet column holding the text.

    Raises:
        UserError: missing/empty corpus, invalid UTF-8, text the tokenizer cannot encode (or would
            drop), an empty split, or an ``out_dir`` that is a file or a directory holding files
            other than shards (which replacing it would delete).
    """
    out = _check_out_dir(Path(out_dir))
    corpus = open_corpus(corpus_spec, text_column)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = _make_temp_dir(out)
    try:
        meta = _write_shards(corpus, corpus_spec, tokenizer, tmp_dir, val_fraction, errors, workers,
                             progress, chunk_bytes)
        _replace_dir(tmp_dir, out)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return meta


def _check_out_dir(out: Path) -> Path:
    """``out`` if ``prepare`` may (re)place a shard directory there. Follows a symlink, so the new
    directory replaces its target and the link keeps working."""
    if out.is_symlink():
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir():
        if others := sorted(f.name for f in out.iterdir() if f.name not in SHARD_FILES):
            raise UserError(f"{out}: holds files that are not shards ({', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''}); replacing it would delete them, "
                            "so choose another --out")
    return out


def _make_temp_dir(out: Path) -> Path:
    # beside `out` so the final rename stays on one filesystem (atomic); hidden, and named after it
    for _ in range(100):
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.mkdir()  # plain mkdir (not mkdtemp): the umask applies, as for a normal directory
            return tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"{out.parent}: cannot create a directory there ({e.strerror})") from None
    raise UserError(f"{out.parent}: cannot create a temporary directory")  # pragma: no cover


def _replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is moved aside first and deleted after."""
    if not out.exists():
        os.rename(new, out)
        return
    # os.rename cannot replace a non-empty directory: move the old one aside, then delete it.
    # A crash between the two renames leaves the old shards at .NAME.*.old, never a mixed dir.
    old = new.with_name(new.name[:-len(".tmp")] + ".old")
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_shards(corpus, corpus_spec: str, tokenizer: Tokenizer, out: Path, val_fraction: float,
                  errors: str, workers: int | None, progress: bool, chunk_bytes: int | None) -> dict:
    """Write the shards, tokenizer.json and meta.json into the (new, empty) directory ``out``."""
    tok_path = tokenizer.save(out / "tokenizer.json")
    dtype = shard_dtype(tokenizer.vocab_size)
    eot = tokenizer.eot_id
    stats = {s: {"file": f"{s}.bin", "tokens": 0, "bytes": 0, "documents": 0, "max_id": -1}
             for s in SPLITS}
    files = {s: open(out / f"{s}.bin", "wb") for s in SPLITS}
    workers = workers or min(os.cpu_count() or 1, 4)
    bar = tqdm(total=corpus.total_bytes(), unit="B", unit_scale=True, desc="tokenizing",
               disable=not progress, leave=False)
    pool = mp.get_context("fork").Pool(workers, _init_worker, (str(tok_path),)) if workers > 1 else None
    try:
        if pool is None:
            _init_worker(str(tok_path))
        pieces = corpus.pieces(val_fraction, errors, on_bytes=bar.update, chunk_bytes=chunk_bytes)
        for split, doc_start, ids, nbytes in (pool.imap if pool else map)(_encode_piece, pieces):
            st = stats[split]
            if doc_start and st["documents"] > 0:
                if eot is None:
                    raise UserError("this corpus has several documents but the tokenizer has no "
                                    "<|endoftext|> token to separate them")
                ids = np.concatenate([np.array([eot], dtype=dtype), ids])
            st["documents"] += doc_start
            ids.tofile(files[split])
            st["tokens"] += len(ids)
            st["bytes"] += nbytes
            if len(ids):
                st["max_id"] = max(st["max_id"], int(ids.max()))
    finally:
        if pool is not None:
            pool.terminate()
        bar.close()
        for f in files.values():
            f.close()
    if corpus.bytes_read == 0:
        raise UserError(f"{corpus_spec}: corpus is empty")
    for s in SPLITS:
        if stats[s]["tokens"] == 0:
            raise UserError(f"{corpus_spec}: the {s} split is empty (corpus too small for "
                            f"--val-fraction {val_fraction}?)")
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "created_by": f"gptforge {__version__}",
        "dtype": dtype.name, "tokenizer": tokenizer.identity(),
        "corpus": {"spec": corpus_spec, "sha256": corpus.sha256, "bytes": corpus.bytes_read,
                   "val_fraction": None if corpus.builtin else val_fraction, "errors": errors},
        "splits": stats,
    }
    write_json(out / "meta.json", meta)
    return meta


@dataclass
class Shards:
    """A prepared shard directory: ``meta`` (dict) and ``tokens(split)`` as a read-only memmap."""

    path: Path
    meta: dict

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def tokens(self, split: str) -> np.ndarray:
        """1-D read-only memmap of the split's token ids (dtype uint16 or uint32)."""
        return np.memmap(self.path / self.meta["splits"][split]["file"], dtype=self.dtype, mode="r")

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.path / "tokenizer.json")


def document_spans(tokens: np.ndarray, eot: int, chunk: int = 1 << 24) -> np.ndarray:
    """The documents of a split as ``[start, end)`` token offsets: int64 of shape (D, 2).

    Documents are the runs between end-of-text ids, as ``_write_shards`` separates them: none
    before the first document or after the last, so ``tokens[start - 1] == eot`` for every
    document but the first. Empty runs are kept (``end == start``). The split is scanned
    ``chunk`` tokens at a time, so memory is O(chunk) besides the result, whatever its size.
    """
    cuts = [np.flatnonzero(np.asarray(tokens[i:i + chunk]) == eot) + i for i in range(0, len(tokens), chunk)]
    cuts = np.concatenate([np.zeros(0, dtype=np.int64), *cuts]).astype(np.int64)
    return np.stack([np.r_[0, cuts + 1], np.r_[cuts, len(tokens)]], axis=1)


def open_shards(path: str | os.PathLike, tokenizer: Tokenizer | None = None) -> Shards:
    """Open and check a shard directory made by ``prepare``.

    Checks: ``meta.json`` against the schema (``ShardMeta``); ``tokenizer.json`` is the one meta
    names (sha256 of its bytes); each shard file's size is tokens x itemsize; no id is >= the
    vocabulary size (the recorded ``max_id``, and the ids themselves: all of them for files up to
    ``FULL_SCAN_BYTES``, the first and last ``SCAN_BYTES`` of larger ones). Shards written before
    ``max_id`` was recorded are scanned in full. Memory: O(``SCAN_BYTES``), whatever meta says.

    Raises:
        UserError: no directory, missing or corrupt ``meta.json``/``tokenizer.json``/shard files,
            ids outside the vocabulary, or (when ``tokenizer`` is given) shards made with a
            different tokenizer. The message names the offending path.
    """
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{path}: no such shard directory (make one with `gptforge data prepare`)")
    if not os.path.lexists(p / "meta.json"):
        raise UserError(f"{p / 'meta.json'}: missing; {path} is not a prepared shard directory")
    try:
        meta = read_json(p / "meta.json", FORMAT, (FORMAT_VERSION,), "shard description",
                         schema=ShardMeta).model_dump()
    except UserError as e:
        raise UserError(f"{e}; run `gptforge data prepare` again") from None
    vocab = meta["tokenizer"]["vocab_size"]
    itemsize = np.dtype(meta["dtype"]).itemsize
    tok_file = p / "tokenizer.json"
    tok_sha = hashlib.sha256(read_file(tok_file, "tokenizer of the shards (the directory is incomplete: "
                                       "run `gptforge data prepare` again)", MAX_JSON_BYTES)).hexdigest()
    if tok_sha != meta["tokenizer"]["sha256"]:
        raise UserError(f"{tok_file}: not the tokenizer meta.json names (sha256 {tok_sha[:12]}, meta "
                        f"says {meta['tokenizer']['sha256'][:12]}); the directory mixes two "
                        "preparations, run `gptforge data prepare` again")
    for s in SPLITS:
        info = meta["splits"][s]
        f = p / info["file"]
        if not f.is_file():
            raise UserError(f"{f}: missing shard file")
        size = f.stat().st_size
        if size != info["tokens"] * itemsize:
            raise UserError(f"{f}: {size} bytes, but meta.json says {info['tokens']} "
                            f"tokens of {meta['dtype']}; the shard is truncated or corrupt")
        _check_ids(f, np.dtype(meta["dtype"]), info.get("max_id"), vocab)
    if tokenizer is not None:
        want, have = tokenizer.identity(), meta["tokenizer"]
        if want.get("sha256") != have.get("sha256"):
            raise UserError(f"{path}: these shards were made with a different tokenizer "
                            f"({have.get('kind')}, vocab {have.get('vocab_size')}, sha256 "
                            f"{str(have.get('sha256'))[:12]}) than the one given ({want['kind']}, vocab "
                            f"{want['vocab_size']}, sha256 {want['sha256'][:12]}); run `gptforge data "
                            "prepare` again with this tokenizer")
    return Shards(p, meta)


def _plain_name(f: str) -> str:
    # no separator, not "." or "..": the file is inside the shard directory; printable (prepare's names are)
    if f in ("", ".", "..", "meta.json", "tokenizer.json") or "/" in f or "\\" in f or not f.isprintable():
        raise ValueError(f)
    return f


# meta.json's schema: exact JSON types (no bool for an int, no 1e12 for an int)
Size = Annotated[int, Field(ge=0, strict=True, description="an integer >= 0")]


class _Split(BaseModel):
    file: Annotated[str, AfterValidator(_plain_name)] = Field(
        description="a file name inside the shard directory")
    tokens: Size
    bytes: Size
    documents: Size
    max_id: int | None = Field(None, strict=True, description="an integer >= -1 (older shards lack it)")


class _Splits(BaseModel):
    train: _Split = Field(description="an object")
    val: _Split = Field(description="an object")


class _TokenizerId(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: str = Field(strict=True, description="a string")
    vocab_size: int = Field(strict=True, ge=1, le=MAX_VOCAB, description="an integer in [1, 2**32]")
    sha256: str = Field(strict=True, pattern="^[0-9a-f]{64}$", description="64 hex digits")
    eot_id: int | None = Field(None, strict=True, ge=0, description="null or an id")


class _Corpus(BaseModel):
    model_config = ConfigDict(extra="allow")
    bytes: Size


class ShardMeta(BaseModel):
    """meta.json as ``prepare`` writes it (``open_shards`` validates it so); ids below vocab_size."""

    model_config = ConfigDict(extra="allow")
    tokenizer: _TokenizerId = Field(description="an object")
    dtype: str = Field(strict=True, description="a string")
    corpus: _Corpus = Field(description='an object with an integer "bytes" >= 0')
    splits: _Splits = Field(description="an object")

    @model_validator(mode="after")
    def _fits_vocab(self):
        vocab = self.tokenizer.vocab_size
        if self.tokenizer.eot_id is not None and self.tokenizer.eot_id >= vocab:
            raise ValueError(f'"tokenizer.eot_id" must be null or an id below vocab_size {vocab}')
        if self.dtype != shard_dtype(vocab).name:
            raise ValueError(f'"dtype" is {self.dtype!r}, but a vocabulary of {vocab} is stored as '
                             f"{shard_dtype(vocab).name}")
        for s in SPLITS:
            max_id = getattr(self.splits, s).max_id
            if max_id is not None and not -1 <= max_id < vocab:
                raise ValueError(f'"splits.{s}.max_id" is {max_id}: ids must be below vocab_size {vocab}')
        return self


def _check_ids(f: Path, dtype: np.dtype, max_id: int | None, vocab: int) -> None:
    """Raise UserError if ``f`` holds an id >= ``vocab`` (or > the recorded ``max_id``)."""
    n = f.stat().st_size // dtype.itemsize
    if n == 0 or vocab >= 1 << (8 * dtype.itemsize):
        return  # no ids, or every value of the dtype is a valid id
    limit = vocab - 1 if max_id is None else max_id
    arr = np.memmap(f, dtype=dtype, mode="r", shape=(n,))
    step = SCAN_BYTES // dtype.itemsize
    if max_id is None or n * dtype.itemsize <= FULL_SCAN_BYTES:
        ranges = [(i, min(i + step, n)) for i in range(0, n, step)]
    else:
        ranges = [(0, step), (n - step, n)]
    for a, b in ranges:  # chunks, so memory stays O(SCAN_BYTES) for any file size
        top = int(arr[a:b].max())
        if top > limit:
            i = a + int(np.argmax(arr[a:b] > limit))
            raise UserError(f"{f}: token {i} has id {int(arr[i])}, but the vocabulary has {vocab} ids"
                            + ("" if max_id is None else f" and meta.json records max_id {max_id}")
                            + "; the shard is corrupt, run `gptforge data prepare` again")
