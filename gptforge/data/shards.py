"""Token shards: a corpus tokenized into flat arrays that numpy can memory-map.

``prepare()`` writes, into one directory:

- ``train.bin`` and ``val.bin``: token ids, native little-endian ``uint16`` when the vocabulary has
  at most 65,536 ids, else ``uint32``; documents separated by the end-of-text token;
- ``tokenizer.json``: a copy of the tokenizer, so the directory is self-contained;
- ``meta.json``: format version, dtype, the tokenizer's identity (kind, vocab size, sha256), the
  corpus spec and sha256, and token, byte and document counts per split.

Files are written under temporary names and renamed when complete, ``meta.json`` last, so a
crash leaves either the previous complete shards or no ``meta.json``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gptforge import __version__
from gptforge.data.corpus import Piece, open_corpus
from gptforge.errors import UserError
from gptforge.tokenizer import CharTokenizer, Tokenizer, load_tokenizer

FORMAT = "gptforge.shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 if every id fits (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


# --- workers: each process loads the tokenizer once -------------------------------------------
_worker_tok: Tokenizer | None = None


def _init_worker(tokenizer_json: str):
    global _worker_tok
    _worker_tok = load_tokenizer(tokenizer_json)


def _encode_piece(piece: Piece) -> tuple[str, bool, np.ndarray, int]:
    assert _worker_tok is not None
    try:
        ids = _worker_tok.encode_ordinary(piece.text)
    except ValueError as e:
        raise UserError(f"cannot tokenize the corpus: {e}") from None
    dtype = shard_dtype(_worker_tok.vocab_size)
    return piece.split, piece.doc_start, np.asarray(ids, dtype=dtype), len(piece.text.encode("utf-8"))


def resolve_tokenizer(spec: str, corpus_spec: str, errors: str = "strict") -> Tokenizer:
    """``"char"`` trains a char tokenizer on the whole corpus (nanoGPT's convention: the
    vocabulary is every character in the text), with ``<|endoftext|>`` only when the corpus has
    several documents to separate; anything else is a path for ``load_tokenizer``."""
    if spec == "char":
        corpus = open_corpus(corpus_spec)
        tok = CharTokenizer.train((p.text for p in corpus.pieces(errors=errors)), specials=())
        return tok if corpus.single_document else CharTokenizer(tok.chars)
    return load_tokenizer(spec)


def prepare(corpus_spec: str, tokenizer: Tokenizer, out_dir: str | os.PathLike, val_fraction: float = 0.1,
            errors: str = "strict", workers: int | None = None, progress: bool = True) -> dict:
    """Tokenize ``corpus_spec`` with ``tokenizer`` into shards in ``out_dir``; return the meta dict.

    Args:
        workers: processes that encode in parallel (default: one per core, up to 4); 1 encodes
            in this process.

    Raises:
        UserError: missing/empty corpus, invalid UTF-8, text the tokenizer cannot encode, or an
            empty split.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = open_corpus(corpus_spec)
    tok_path = tokenizer.save(out / "tokenizer.json")
    dtype = shard_dtype(tokenizer.vocab_size)
    eot = tokenizer.eot_id
    stats = {s: {"file": f"{s}.bin", "tokens": 0, "bytes": 0, "documents": 0} for s in SPLITS}
    files = {s: open(out / f"{s}.bin.tmp", "wb") for s in SPLITS}
    workers = workers or min(os.cpu_count() or 1, 4)
    bar = tqdm(total=corpus.total_bytes(), unit="B", unit_scale=True, desc="tokenizing",
               disable=not progress, leave=False)
    pool = mp.get_context("fork").Pool(workers, _init_worker, (str(tok_path),)) if workers > 1 else None
    try:
        pieces = corpus.pieces(val_fraction, errors, on_bytes=bar.update)
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
                st["documents"] += 1
            ids.tofile(files[split])
            st["tokens"] += len(ids)
            st["bytes"] += nbytes
    finally:
        if pool is not None:
            pool.terminate()
        bar.close()
        for f in files.values():
            f.close()
    if corpus.bytes_read == 0:
        _cleanup(out)
        raise UserError(f"{corpus_spec}: corpus is empty")
    for s in SPLITS:
        if stats[s]["tokens"] == 0:
            _cleanup(out)
            raise UserError(f"{corpus_spec}: the {s} split is empty (corpus too small for "
                            f"--val-fraction {val_fraction}?)")
    for s in SPLITS:
        os.replace(out / f"{s}.bin.tmp", out / f"{s}.bin")
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "created_by": f"gptforge {__version__}",
        "dtype": dtype.name, "tokenizer": tokenizer.identity(),
        "corpus": {"spec": corpus_spec, "sha256": corpus.sha256, "bytes": corpus.bytes_read,
                   "val_fraction": None if corpus.builtin else val_fraction, "errors": errors},
        "splits": stats,
    }
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, out / "meta.json")
    return meta


def _cleanup(out: Path):
    for s in SPLITS:
        (out / f"{s}.bin.tmp").unlink(missing_ok=True)


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

    Raises:
        UserError: no or corrupt ``meta.json``, a shard file whose size does not match it, or
            (when ``tokenizer`` is given) shards made with a different tokenizer.
    """
    p = Path(path)
    mp_ = p / "meta.json"
    if not p.is_dir():
        raise UserError(f"{path}: no such shard directory (make one with `gptforge data prepare`)")
    try:
        meta = json.loads(mp_.read_text())
    except FileNotFoundError:
        raise UserError(f"{mp_}: missing; {path} is not a prepared shard directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{mp_}: corrupt ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{mp_}: not a gptforge shard description")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{mp_}: shard format version {meta.get('version')!r} is not supported")
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        for s in SPLITS:
            info = meta["splits"][s]
            f = p / info["file"]
            if not f.exists():
                raise UserError(f"{f}: missing shard file")
            if f.stat().st_size != info["tokens"] * itemsize:
                raise UserError(f"{f}: {f.stat().st_size} bytes, but meta.json says {info['tokens']} "
                                f"tokens of {meta['dtype']}; the shard is truncated or corrupt")
    except (KeyError, TypeError) as e:
        raise UserError(f"{mp_}: corrupt (missing {e})") from None
    if tokenizer is not None:
        want, have = tokenizer.identity(), meta.get("tokenizer", {})
        if want.get("sha256") != have.get("sha256"):
            raise UserError(f"{path}: these shards were made with a different tokenizer "
                            f"({have.get('kind')}, vocab {have.get('vocab_size')}, sha256 "
                            f"{str(have.get('sha256'))[:12]}) than the one given ({want['kind']}, vocab "
                            f"{want['vocab_size']}, sha256 {want['sha256'][:12]}); run `gptforge data "
                            "prepare` again with this tokenizer")
    return Shards(p, meta)
