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

``open_shards`` trusts nothing in the directory: ``meta.json`` is checked against a schema (types,
ranges, dtype, plain file names, file sizes) and the ids against the vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gptforge import __version__
from gptforge.data.corpus import Piece, open_corpus
from gptforge.errors import UserError
from gptforge.io import write_json
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
    dtype = shard_dtype(_worker_tok.vocab_size)
    arr = np.asarray(ids, dtype=dtype)
    nbytes = len(piece.text.encode("utf-8"))
    # A split pattern that does not match every character makes tiktoken drop the rest silently;
    # the byte count of the tokens catches that (one vectorised lookup per piece).
    if int(_worker_token_bytes[arr].sum()) != nbytes:
        raise UserError(f"the tokenizer drops text: {nbytes} bytes of corpus encode to tokens of "
                        f"{int(_worker_token_bytes[arr].sum())} bytes (its split pattern does not "
                        "match every character)")
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
        others = sorted(f.name for f in out.iterdir() if f.name not in SHARD_FILES)
        if others:
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
    piece_kw = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    try:
        pieces = corpus.pieces(val_fraction, errors, on_bytes=bar.update, **piece_kw)
        if pool is None:
            _init_worker(str(tok_path))
            results = map(_encode_piece, pieces)
        else:
            results = pool.imap(_encode_piece, pieces)
        for split, doc_start, ids, nbytes in results:
            st = stats[split]
            if doc_start:
                if st["documents"] > 0:
                    if eot is None:
                        raise UserError("this corpus has several documents but the tokenizer has no "
                                        "<|endoftext|> token to separate them")
                    np.array([eot], dtype=dtype).tofile(files[split])
                    st["tokens"] += 1
                    st["max_id"] = max(st["max_id"], eot)
                st["documents"] += 1
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


def open_shards(path: str | os.PathLike, tokenizer: Tokenizer | None = None) -> Shards:
    """Open and check a shard directory made by ``prepare``.

    Checks: ``meta.json`` against the schema (``check_meta``); ``tokenizer.json`` is the one meta
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
    mp_ = p / "meta.json"
    if not p.is_dir():
        raise UserError(f"{path}: no such shard directory (make one with `gptforge data prepare`)")
    try:
        raw = mp_.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{mp_}: missing; {path} is not a prepared shard directory") from None
    except OSError as e:
        raise UserError(f"{mp_}: cannot read ({e.strerror or e})") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge ints
        raise UserError(f"{mp_}: corrupt ({type(e).__name__}: {str(e)[:200]})") from None
    check_meta(meta, mp_)
    vocab = meta["tokenizer"]["vocab_size"]
    itemsize = np.dtype(meta["dtype"]).itemsize
    tok_file = p / "tokenizer.json"
    try:
        tok_sha = hashlib.sha256(tok_file.read_bytes()).hexdigest()
    except OSError as e:
        raise UserError(f"{tok_file}: cannot read ({e.strerror or e}); the shard directory is "
                        "incomplete, run `gptforge data prepare` again") from None
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


def _is_int(x) -> bool:
    return type(x) is int  # not bool, not float (1e12 in JSON is a float)


def check_meta(meta, path: Path) -> None:
    """Check a parsed ``meta.json`` against the schema ``prepare`` writes.

    Types and ranges: ``vocab_size`` an int in [1, 2**32]; ``dtype`` the one ``shard_dtype``
    gives for it; per split, ``file`` a plain file name (no directory part, so never outside the
    shard directory), ``tokens``/``bytes``/``documents`` ints >= 0, ``max_id`` (optional: older
    shards lack it) an int in [-1, vocab_size); ``eot_id`` null or an id < vocab_size.

    Raises:
        UserError: naming ``path`` and the first field that is wrong.
    """
    def bad(msg: str):
        raise UserError(f"{path}: corrupt ({msg}); run `gptforge data prepare` again")

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a gptforge shard description")
    if not _is_int(meta.get("version")) or meta["version"] != FORMAT_VERSION:
        raise UserError(f"{path}: shard format version {meta.get('version')!r} is not supported")
    tok = meta.get("tokenizer")
    if not isinstance(tok, dict):
        bad('"tokenizer" must be an object')
    vocab = tok.get("vocab_size")
    if not _is_int(vocab) or not 1 <= vocab <= MAX_VOCAB:
        bad(f'"tokenizer.vocab_size" must be an integer in [1, 2**32], not {str(vocab)[:40]!r}')
    if not isinstance(tok.get("kind"), str):
        bad('"tokenizer.kind" must be a string')
    sha = tok.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        bad('"tokenizer.sha256" must be 64 hex digits')
    eot = tok.get("eot_id")
    if eot is not None and not (_is_int(eot) and 0 <= eot < vocab):
        bad(f'"tokenizer.eot_id" must be null or an id below vocab_size {vocab}')
    want = shard_dtype(vocab).name
    if meta.get("dtype") != want:
        bad(f'"dtype" is {str(meta.get("dtype"))[:40]!r}, but a vocabulary of {vocab} is stored as {want}')
    corpus = meta.get("corpus")
    if not isinstance(corpus, dict) or not _is_int(corpus.get("bytes")) or corpus["bytes"] < 0:
        bad('"corpus" must be an object with an integer "bytes" >= 0')
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        bad('"splits" must be an object')
    for s in SPLITS:
        info = splits.get(s)
        if not isinstance(info, dict):
            bad(f'"splits.{s}" must be an object')
        f = info.get("file")
        # a plain name: no separator, not "." or "..", so the file is inside the shard directory
        if (not isinstance(f, str) or f in ("", ".", "..") or "/" in f or "\\" in f or "\0" in f
                or f in ("meta.json", "tokenizer.json")):
            bad(f'"splits.{s}.file" must be a file name inside the shard directory, not {str(f)[:60]!r}')
        for k in ("tokens", "bytes", "documents"):
            if not _is_int(info.get(k)) or info[k] < 0:
                bad(f'"splits.{s}.{k}" must be an integer >= 0, not {str(info.get(k))[:40]!r}')
        if "max_id" in info and not (_is_int(info["max_id"]) and -1 <= info["max_id"] < vocab):
            bad(f'"splits.{s}.max_id" is {str(info["max_id"])[:40]!r}: ids must be below '
                f'vocab_size {vocab}')


def _check_ids(f: Path, dtype: np.dtype, max_id: int | None, vocab: int) -> None:
    """Raise UserError if ``f`` holds an id >= ``vocab`` (or > the recorded ``max_id``)."""
    if vocab >= 1 << (8 * dtype.itemsize):
        return  # every value of the dtype is a valid id
    limit = vocab - 1 if max_id is None else max_id
    n = f.stat().st_size // dtype.itemsize
    if n == 0:
        return
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
    del arr
