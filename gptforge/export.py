"""Export a GPT as one self-describing file: "a parameters file plus a run file".

Layout of ``model.bin`` (all integers little-endian)::

    bytes 0..7     magic b"GPTFORGE"
    uint32         format version (1)
    uint32         0 (reserved)
    uint64         header length H in bytes
    H bytes        UTF-8 JSON header:
                     "model":     {"arch": "gpt", ...GPTConfig fields}
                     "dtype":     "float32" | "bfloat16"
                     "tensors":   {name: {"shape": [...], "offset": int, "nbytes": int}}
                                  offsets count from the start of the data section
                     "tokenizer": {"kind": "char", "chars": str, "special_tokens": {str: id}} or
                                  {"kind": "bpe", "pattern": str, "vocab": [base64 bytes of id 0..],
                                   "special_tokens": {str: id}}
    zero padding   to a multiple of 64 bytes
    data section   each tensor row-major, 64-byte aligned; bfloat16 stored as its raw 16 bits

``gptforge/run.py`` reads it with nothing but numpy (and ``regex`` if installed) and generates text.
Only GPT models are exported (the runner is a Transformer runner); tied embeddings are stored once.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path

import torch

from gptforge.errors import UserError
from gptforge.io import atomic_open
from gptforge.models import model_config
from gptforge.tokenizer import Tokenizer

# run.py repeats these (it imports nothing from gptforge); tests/test_run_hardening.py checks they agree
MAGIC = b"GPTFORGE"
VERSION = 1
ALIGN = 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOKENIZER_KINDS = ("char", "bpe")


def portable_tokenizer(tok: Tokenizer) -> dict:
    """The tokenizer as run.py understands it: char tables or BPE token bytes + split pattern."""
    if tok.kind == "char":
        return {"kind": "char", "chars": tok.chars, "special_tokens": dict(tok.special_tokens)}
    pattern = getattr(tok, "pattern", None)
    if pattern is None:
        raise UserError(f"cannot export a {tok.kind} tokenizer (no split pattern)")
    specials = set(tok.special_tokens.values())
    n_ordinary = tok.vocab_size - len(specials)
    if any(i < n_ordinary for i in specials):
        raise UserError("cannot export a tokenizer whose special tokens are not at the end of the vocabulary")
    vocab = [base64.b64encode(tok.decode_bytes([i])).decode("ascii") for i in range(n_ordinary)]
    return {"kind": "bpe", "pattern": pattern, "vocab": vocab, "special_tokens": dict(tok.special_tokens)}


def export_model(model: torch.nn.Module, tok: Tokenizer, out: str | os.PathLike,
                 dtype: str = "float32") -> dict:
    """Write ``model`` and ``tok`` to ``out`` in the format above; return {"bytes", "params"}.

    ``out`` is written atomically (gptforge.io), so a failed export leaves neither a partial ``out``
    nor a temporary file. dtype: "float32" or "bfloat16" (the weights' storage; bytes = 4 or 2 per param).

    Raises:
        UserError: the model is not a GPT, the tokenizer cannot be described portably or has more tokens
            than the model's vocab_size, dtype is unknown, or ``out`` is a directory or cannot be written.
    """
    cfg = model_config(model)
    if cfg.get("arch") != "gpt":
        raise UserError(f"export supports GPT models only, not {cfg.get('arch')!r}")
    if dtype not in DTYPES:
        raise UserError(f"export dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if tok.vocab_size > cfg["vocab_size"]:  # run.py would reject the file: ids past the embedding
        raise UserError(f"the tokenizer has {tok.vocab_size} tokens, more than the model's vocab_size "
                        f"{cfg['vocab_size']}")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a directory; give a file path such as {out / 'model.bin'}")
    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:  # tied lm_head
            continue
        seen.add(t.data_ptr())
        tensors[name] = t.detach().to("cpu", DTYPES[dtype]).contiguous()
    index, offset = {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        index[name] = {"shape": list(t.shape), "offset": offset, "nbytes": nbytes}
        offset += -(-nbytes // ALIGN) * ALIGN
    header = json.dumps({"model": cfg, "dtype": dtype, "tensors": index,
                         "tokenizer": portable_tokenizer(tok)}).encode("utf-8")
    prefix = MAGIC + struct.pack("<IIQ", VERSION, 0, len(header)) + header
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(out, "wb") as f:
            f.write(prefix + b"\0" * (-len(prefix) % ALIGN))
            for t in tensors.values():
                raw = (t.view(torch.int16) if dtype == "bfloat16" else t).numpy().tobytes()
                f.write(raw + b"\0" * (-len(raw) % ALIGN))
    except OSError as e:  # a full disk, a read-only folder
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    return {"bytes": out.stat().st_size, "params": sum(t.numel() for t in tensors.values())}
