"""Bits per byte of a model on a shard directory or a text file.

bits per byte = sum of next-token losses (nats) / ln 2 / UTF-8 bytes those tokens stand for.

Unlike loss per token it does not depend on the tokenizer, so models with different vocabularies
compare (nanochat's ``loss_eval.evaluate_bpb``; the "bits per character" of char-rnn papers on
ASCII text). Special tokens such as ``<|endoftext|>`` stand for no text: they are neither counted
as bytes nor as loss (gptforge.train.evaluate, which this module calls, documents the convention).

The token stream is cut into consecutive windows of ``block_size + 1`` tokens that overlap by one
(inputs ``tokens[o:o+T]``, targets ``tokens[o+1:o+T+1]``, ``o = 0, T, 2T, ...``), so every token but
the first is scored exactly once, each with the context since its window's start; the last window
may be shorter (its missing targets are masked). A text file is read as one document and starts
with ``<|endoftext|>`` when the tokenizer has one, so its first token is scored too and the byte
count is the file's size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from gptforge.data.shards import open_shards
from gptforge.errors import UserError
from gptforge.train.evaluate import evaluate


def windows(tokens: np.ndarray, T: int, B: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) int64 batches of up to B rows, shape (B, T): consecutive windows of ``tokens`` (see the
    module docstring); the short last window is padded with input 0 and target -1 (not scored)."""
    starts = list(range(0, max(len(tokens) - 1, 0), T))
    for i in range(0, len(starts), B):
        chunk = starts[i:i + B]
        x = torch.zeros(len(chunk), T, dtype=torch.long)
        y = torch.full((len(chunk), T), -1, dtype=torch.long)
        for r, o in enumerate(chunk):
            w = torch.from_numpy(np.asarray(tokens[o:o + T + 1], dtype=np.int64))
            x[r, :len(w) - 1], y[r, :len(w) - 1] = w[:-1], w[1:]
        yield x.to(device), y.to(device)


def bpb_tokens(model: torch.nn.Module, tokens: np.ndarray, token_bytes: np.ndarray, batch_size: int = 8
               ) -> dict:
    """Bits per byte of ``model`` on the 1-D id array ``tokens``.

    token_bytes: (vocab_size,) UTF-8 bytes per id (``Tokenizer.token_bytes()``; 0 for special tokens).
    Returns {"bpb": bits/byte, "loss": nats/token over every scored target, "tokens": targets scored,
    "bytes": UTF-8 bytes of the scored text targets, "seconds"}.
    """
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    tb = torch.as_tensor(np.asarray(token_bytes, dtype=np.int64), device=device)
    n = max(len(tokens) - 1, 0)
    batches = windows(tokens, model.config.block_size, batch_size, device)
    one_process = SimpleNamespace(all_sum=lambda t: t)  # the loop's Dist, with nothing to sum over
    loss, bpb = evaluate(model, batches, tb, nullcontext(), one_process)  # in the model's own dtype
    nbytes = int(tb[torch.as_tensor(np.asarray(tokens[1:], dtype=np.int64), device=device)].sum()) if n else 0
    return {"bpb": bpb, "loss": loss, "tokens": n, "bytes": nbytes, "seconds": time.perf_counter() - t0}


def _check_vocab(model: torch.nn.Module, tok, what: str) -> None:
    if tok.vocab_size != model.config.vocab_size:
        raise UserError(f"{what}: tokenizer has {tok.vocab_size} ids but the model "
                        f"{model.config.vocab_size}; evaluate with the tokenizer the model was trained with")


def bpb_shards(model: torch.nn.Module, shard_dir: str | Path, split: str = "val", tok=None) -> dict:
    """Bits per byte on split ``split`` ("train" or "val") of a shard directory (gptforge.data.shards).

    tok: the model's tokenizer; when given, the shards must have been made with it (sha256 checked).
    Returns `bpb_tokens`'s dict plus "split".

    Raises:
        UserError: a missing or corrupt shard directory, shards of another tokenizer, a vocabulary
            that does not match the model, or an unknown split.
    """
    if split not in ("train", "val"):
        raise UserError(f"unknown split {split!r}; choose train or val")
    shards = open_shards(shard_dir, tok)
    shard_tok = shards.tokenizer()
    _check_vocab(model, shard_tok, str(shard_dir))
    tokens = shards.tokens(split)
    if len(tokens) < 2:
        raise UserError(f"{shard_dir}: the {split} split holds {len(tokens)} tokens; nothing to score")
    return {**bpb_tokens(model, tokens, shard_tok.token_bytes()), "split": split}


def bpb_text(model: torch.nn.Module, tok, path: str | Path, batch_size: int = 8) -> dict:
    """Bits per byte on a UTF-8 text file, tokenized with ``tok`` (special-token strings as plain text).

    Returns `bpb_tokens`'s dict; "bytes" is the file's size.

    Raises:
        UserError: a missing, unreadable, non-UTF-8 or empty file, or a tokenizer whose vocabulary
            does not match the model's.
    """
    p = Path(path)
    _check_vocab(model, tok, str(p))
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: no such text file") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory; give a text file, or a shard directory for shards") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start})") from None
    ids = ([] if tok.eot_id is None else [tok.eot_id]) + tok.encode_ordinary(text)
    if len(ids) < 2:
        raise UserError(f"{p}: too little text to score")
    out = bpb_tokens(model, np.asarray(ids, dtype=np.int64), tok.token_bytes(), batch_size)
    # a split pattern that misses characters makes tiktoken drop them silently: the byte count shows it
    if tok.eot_id is not None and out["bytes"] != len(text.encode("utf-8")):
        raise UserError(f"{p}: the tokenizer drops text ({len(text.encode('utf-8'))} bytes encode to "
                        f"tokens of {out['bytes']} bytes)")
    return out

