#!/usr/bin/env python3
"""Run a GPT exported by `gptforge export` with nothing but numpy: the "run file" of an LLM.

    python run.py model.bin --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8
    python -m gptforge.run model.bin ...          # the same, from an installed gptforge

This file is self-contained on purpose: copy it anywhere next to a model.bin. It does not import
gptforge or torch. It reads the header (see gptforge/export.py for the layout), checks it against
the file (`check_header`: a damaged or hostile file is refused with one line, never allowed to
allocate more than it holds), maps the weights, and decodes one token at a time with a KV cache,
batch size 1. Bad input of any kind ends with one line on stderr and exit status 2. With
``--temperature 0`` its output is the same as `gptforge sample --temperature 0` (tested).

Tokenizer: char-level, or byte-level BPE (split with the ``regex`` module when installed; without it
the split pattern's \\p{L} and \\p{N} classes are approximated with Python's ``re``).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import struct
import sys

import numpy as np

MAGIC = b"GPTFORGE"
VERSION = 1
ALIGN = 64  # the data section and every tensor in it start on a multiple of this many bytes
DTYPES = {"float32": 4, "bfloat16": 2}  # stored dtype -> bytes per element
TOKENIZER_KINDS = ("char", "bpe")
POSITIONALS, NORMS, MLPS = ("learned", "rope"), ("layernorm", "rmsnorm"), ("gelu", "relu2", "swiglu")


# --- loading ------------------------------------------------------------------------------------
def _size(v, lo: int = 1) -> bool:
    """v is a JSON integer >= lo (a bool is an int to Python, and 2.0 is not a size)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _real(v) -> bool:
    """v is a finite JSON number (json.loads accepts NaN and Infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v - v == 0


def _show(v) -> str:
    """A short, one-line repr of a header value for an error message."""
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """The tensors a GPT with config ``cfg`` (already checked) is stored as: {name: shape}."""
    C, V, L, hidden = cfg["n_embd"], cfg["vocab_size"], cfg["n_layer"], cfg["mlp_hidden"]
    hs = C // cfg["n_head"]
    layernorm = cfg["norm"] == "layernorm"

    def linear(name, n_out, n_in):
        return {name + ".weight": (n_out, n_in), **({name + ".bias": (n_out,)} if cfg["bias"] else {})}

    def norm(name):  # LayerNorm: a scale, and a shift iff bias; RMSNorm has no parameters
        if not layernorm:
            return {}
        return {name + ".weight": (C,), **({name + ".bias": (C,)} if cfg["bias"] else {})}

    want = {"transformer.wte.weight": (V, C)}
    if cfg["positional"] == "learned":
        want["transformer.wpe.weight"] = (cfg["block_size"], C)
    if cfg["embd_norm"]:
        want |= norm("transformer.ln_e")
    for i in range(L):
        p = f"transformer.h.{i}."
        want |= norm(p + "ln_1") | norm(p + "ln_2")
        want |= linear(p + "attn.c_attn", (cfg["n_head"] + 2 * cfg["n_kv_head"]) * hs, C)
        want |= linear(p + "attn.c_proj", C, C)
        want |= linear(p + "mlp.c_fc", hidden * 2 if cfg["mlp"] == "swiglu" else hidden, C)
        want |= linear(p + "mlp.c_proj", C, hidden)
    want |= norm("transformer.ln_f")
    if not cfg["tie_embeddings"]:  # tied: lm_head is wte, stored once
        want["lm_head.weight"] = (V, C)
    return want


class BadHeader(Exception):
    """One problem of a model.bin header (``check_header`` names the file)."""


def check_header(header, file_size: int, path: str, data_start: int) -> dict[str, tuple[int, tuple]]:
    """Check a parsed model.bin header against what this runner implements, before allocating anything.

    file_size: bytes in the file; data_start: byte at which the data section begins. Every size is
    checked against the tensors present and every tensor against the file, so nothing a header says
    can make the runner allocate more than the file holds (the KV cache grows with the tokens actually
    generated, not with block_size). Returns {name: (byte offset in the file, shape)} of every tensor.
    Raises SystemExit("<path>: <problem>") for the first problem found.
    """
    try:
        if not isinstance(header, dict):
            raise BadHeader("the header is not a JSON object")
        cfg, dtype, tensors, tk = (header.get(k) for k in ("model", "dtype", "tensors", "tokenizer"))
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise BadHeader(f"unknown dtype {_show(dtype)} (this runner reads {', '.join(DTYPES)})")
        _check_model(cfg)
        plan = _check_tensors(cfg, dtype, tensors, file_size, data_start)
        _check_tokenizer(tk, cfg["vocab_size"])
    except BadHeader as e:
        raise SystemExit(f"{path}: {e}") from None
    return plan


def _check_model(cfg) -> None:
    if not isinstance(cfg, dict) or cfg.get("arch") != "gpt":
        raise BadHeader("the model is not a GPT (this runner runs gptforge GPTs only)")
    for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden"):
        if not _size(cfg.get(k)):
            raise BadHeader(f"model {k} must be a positive integer, not {_show(cfg.get(k))}")
    for k, choices in (("positional", POSITIONALS), ("norm", NORMS), ("mlp", MLPS)):
        if cfg.get(k) not in choices:
            raise BadHeader(f"unknown model {k} {_show(cfg.get(k))} (this runner knows {', '.join(choices)})")
    for k in ("embd_norm", "qk_norm", "tie_embeddings", "bias"):
        if not isinstance(cfg.get(k), bool):
            raise BadHeader(f"model {k} must be true or false, not {_show(cfg.get(k))}")
    C, nh, nkv = cfg["n_embd"], cfg["n_head"], cfg["n_kv_head"]
    if C % nh or nh % nkv:
        raise BadHeader(f"model n_embd {C}, n_head {nh}, n_kv_head {nkv}: each must divide the one before")
    if cfg["positional"] == "rope" and C // nh % 2:
        raise BadHeader(f"RoPE needs an even head size, not n_embd / n_head = {C // nh}")
    if cfg["positional"] == "rope" and not (_real(cfg.get("rope_theta")) and cfg["rope_theta"] > 0):
        raise BadHeader(f"model rope_theta must be a positive number, not {_show(cfg.get('rope_theta'))}")
    if not (_real(cfg.get("norm_eps")) and cfg["norm_eps"] >= 0):
        raise BadHeader(f"model norm_eps must be a number >= 0, not {_show(cfg.get('norm_eps'))}")
    cap = cfg.get("logit_softcap")
    if cap is not None and not (_real(cap) and cap > 0):
        raise BadHeader(f"model logit_softcap must be a positive number or null, not {_show(cap)}")


def _check_tensors(cfg: dict, dtype: str, tensors, file_size: int, data_start: int) -> dict:
    """Exactly the tensors the config needs, each inside the file and none overlapping another
    (n_layer is bounded by the number of tensors first, so a huge one cannot make the list of
    expected names huge)."""
    if not isinstance(tensors, dict):
        raise BadHeader("the header has no tensor index")
    if cfg["n_layer"] > len(tensors):
        raise BadHeader(f"model n_layer {cfg['n_layer']} but only {len(tensors)} tensors")
    want = tensor_shapes(cfg)
    for name in tensors:
        if name not in want:
            raise BadHeader(f"unexpected tensor {_show(name)} for this config")
    plan, spans = {}, []
    for name, shape in want.items():
        t = tensors.get(name)
        if t is None:
            raise BadHeader(f"tensor {name} is missing")
        if not isinstance(t, dict) or t.get("shape") != list(shape):
            got = t.get("shape") if isinstance(t, dict) else t
            raise BadHeader(f"tensor {name} has shape {_show(got)}; the config needs {list(shape)}")
        nbytes = DTYPES[dtype] * math.prod(shape)
        offset = t.get("offset")
        if t.get("nbytes") != nbytes:
            raise BadHeader(f"tensor {name}: nbytes {_show(t.get('nbytes'))} is not {nbytes} "
                            f"({list(shape)} {dtype})")
        if not _size(offset, 0) or offset % ALIGN:
            raise BadHeader(f"tensor {name}: offset {_show(offset)} is not a multiple of {ALIGN}")
        end = data_start + offset + nbytes
        if end > file_size:
            raise BadHeader(f"truncated: tensor {name} ends at byte {end}, but the file has {file_size}")
        plan[name] = (data_start + offset, shape)
        spans.append((offset, offset + nbytes, name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:  # two names for one stretch of bytes: the exporter never writes that
            raise BadHeader(f"tensors {a} and {b} overlap in the file")
    return plan


def _check_tokenizer(tk, V: int) -> None:
    """Every id the tokenizer can produce must be a row of wte."""
    if not isinstance(tk, dict) or tk.get("kind") not in TOKENIZER_KINDS:
        got = tk.get("kind") if isinstance(tk, dict) else tk
        raise BadHeader(f"unknown tokenizer kind {_show(got)} "
                        f"(this runner knows {', '.join(TOKENIZER_KINDS)})")
    n = len(tk["chars"]) if tk["kind"] == "char" and isinstance(tk.get("chars"), str) else _check_bpe(tk)
    if n > V:
        raise BadHeader(f"the tokenizer has {n} tokens but the model's vocab_size is {V}")
    special = tk.get("special_tokens")
    if not isinstance(special, dict):
        raise BadHeader("the tokenizer has no special_tokens object")
    for s, i in special.items():
        if not s or not _size(i, n) or i >= V:  # "" would match everywhere; ids follow the ordinary ones
            raise BadHeader(f"special token {_show(s)} has id {_show(i)}, outside {n}..{V - 1}")


def _check_bpe(tk: dict) -> int:
    """The number of ordinary tokens of a BPE tokenizer (``tk`` of kind bpe; a char tokenizer here
    lacks its string of chars)."""
    if tk["kind"] == "char":
        raise BadHeader("char tokenizer without a string of chars")
    vocab = tk.get("vocab")
    if not isinstance(vocab, list) or not all(isinstance(b, str) for b in vocab):
        raise BadHeader("BPE tokenizer without a list of base64 tokens")
    try:
        tokens = {base64.b64decode(b, validate=True) for b in vocab}
    except ValueError:
        raise BadHeader("BPE tokenizer vocab holds something that is not base64") from None
    if not {bytes([i]) for i in range(256)} <= tokens:  # every text must be encodable
        raise BadHeader("BPE tokenizer vocab lacks some of the 256 single bytes")
    if not isinstance(tk.get("pattern"), str):
        raise BadHeader("BPE tokenizer without a split pattern")
    try:
        split_function(tk["pattern"])
    except Exception as e:  # re.error, regex.error, or our own ValueError; all mean "unusable"
        raise BadHeader(f"BPE split pattern {_show(tk['pattern'])} does not compile: "
                        f"{' '.join(str(e).split())}") from None
    return len(vocab)


def load(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read model.bin: (header dict, {name: float32 array}), checked with `check_header` first.

    Memory: one float32 copy of the weights (twice the file size for bfloat16).
    Raises SystemExit("<path>: <problem>") for a file that cannot be read or is not a valid model.bin.
    """
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            head = f.read(24)
            if len(head) < 24 or head[:8] != MAGIC:
                raise SystemExit(f"{path}: not a gptforge model.bin")
            version, _, hlen = struct.unpack("<IIQ", head[8:])
            if version != VERSION:
                raise SystemExit(f"{path}: model.bin version {version} is not supported (only {VERSION})")
            if hlen > file_size - 24:  # before reading: a crafted length must not allocate
                raise SystemExit(f"{path}: truncated: header of {hlen} bytes, but the file has {file_size}")
            try:
                header = json.loads(f.read(hlen).decode("utf-8"))
            except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, or JSON nested too deep
                raise SystemExit(f"{path}: the header is not valid JSON ({type(e).__name__})") from None
            plan = check_header(header, file_size, path, -(-(24 + hlen) // ALIGN) * ALIGN)
            raw = np.memmap(f, dtype=np.uint8, mode="r", shape=(file_size,))
    except OSError as e:
        raise SystemExit(f"{path}: cannot read ({e.strerror or e})") from None
    weights = {}
    for name, (start, shape) in plan.items():
        buf = raw[start: start + DTYPES[header["dtype"]] * math.prod(shape)]
        if header["dtype"] == "bfloat16":  # bf16 is the top half of a float32
            a = (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = buf.view("<f4").astype(np.float32)
        if not np.isfinite(a).all():
            raise SystemExit(f"{path}: tensor {name} holds NaN or infinite values")
        weights[name] = a.reshape(shape)
    return header, weights


# --- tokenizer ----------------------------------------------------------------------------------
def split_function(pattern: str):
    """The pre-tokenizer: ``regex.compile(pattern).findall``, or `_stdlib_split` without ``regex``."""
    try:
        import regex
    except ImportError:
        return _stdlib_split(pattern)
    return regex.compile(pattern).findall


def _stdlib_split(pattern: str):
    """The split pattern in Python's ``re`` (no \\p{..} classes): letters are ``[^\\W\\d_]``, numbers
    ``\\d``. For the GPT-2 and GPT-4 patterns this splits like ``regex`` except around numeric
    characters outside Nd (such as "²") and combining marks; other patterns need ``regex``.
    Raises ValueError (or re.error) for a pattern it cannot translate."""
    import re

    for cls, alt in ((r"[^\r\n\p{L}\p{N}]", r"(?:[^\r\n\w]|_)"), (r"[^\s\p{L}\p{N}]", r"(?:[^\s\w]|_)"),
                     (r"\p{L}", r"[^\W\d_]"), (r"\p{N}", r"\d")):
        pattern = pattern.replace(cls, alt)
    if r"\p{" in pattern:
        raise ValueError("this tokenizer's split pattern needs the regex module: pip install regex")
    return re.compile(pattern).findall


class Tokenizer:
    """Char-level or byte-level BPE tokenizer from a header's "tokenizer" (checked by `check_header`)."""

    def __init__(self, d: dict):
        self.kind = d["kind"]
        self.special = dict(d["special_tokens"])
        if self.kind == "char":
            self.vocab = [c.encode("utf-8") for c in d["chars"]]
            self.stoi = {c: i for i, c in enumerate(d["chars"])}
        else:
            self.vocab = [base64.b64decode(b) for b in d["vocab"]]
            self.ranks = {b: i for i, b in enumerate(self.vocab)}
            self.split = split_function(d["pattern"])
        for s, i in self.special.items():  # i < the model's vocab_size: bounded by the file
            self.vocab += [b""] * (i + 1 - len(self.vocab))
            self.vocab[i] = s.encode("utf-8")

    def _bpe(self, chunk: bytes) -> list[int]:
        # merge the adjacent pair whose concatenation has the lowest rank, until none is in the vocab
        parts = [bytes([b]) for b in chunk]
        while len(parts) > 1:
            best, at = None, -1
            for i in range(len(parts) - 1):
                r = self.ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            parts[at: at + 2] = [parts[at] + parts[at + 1]]
        return [self.ranks[p] for p in parts]

    def encode_ordinary(self, text: str) -> list[int]:
        if self.kind == "char":
            try:
                return [self.stoi[c] for c in text]
            except KeyError as e:
                c = e.args[0]
                raise ValueError(f"character {c!r} (U+{ord(c):04X}) is not in the vocabulary") from None
        return [i for chunk in self.split(text) for i in self._bpe(chunk.encode("utf-8"))]

    def encode(self, text: str) -> list[int]:
        """Special-token strings in the text become their special ids."""
        ids, start = [], 0
        while True:
            hits = [(text.find(s, start), s) for s in self.special if text.find(s, start) != -1]
            if not hits:
                return ids + self.encode_ordinary(text[start:])
            i, s = min(hits, key=lambda h: (h[0], -len(h[1])))
            ids += self.encode_ordinary(text[start:i]) + [self.special[s]]
            start = i + len(s)

    def decode_bytes(self, ids: list[int]) -> bytes:
        # ids past the tokenizer's last token are padding rows of the model's vocabulary: no bytes
        return b"".join(self.vocab[i] if i < len(self.vocab) else b"" for i in ids)


# --- the model ----------------------------------------------------------------------------------
class GPT:
    """Forward pass of gptforge's GPT (both presets) in float32 numpy, with a KV cache."""

    def __init__(self, cfg: dict, w: dict[str, np.ndarray]):
        self.c, self.w = cfg, w
        C, nh = cfg["n_embd"], cfg["n_head"]
        self.nh, self.nkv, self.hs = nh, cfg["n_kv_head"], C // nh
        hs = self.hs
        self.lm_head = w.get("lm_head.weight", w["transformer.wte.weight"])  # tied: stored once
        if cfg["positional"] == "rope":
            self.inv_freq = 1.0 / (cfg["rope_theta"] ** (np.arange(0, hs, 2, dtype=np.float32) / hs))
        # the KV cache grows with the positions actually fed (up to block_size), so a header's
        # block_size alone never allocates anything
        self.k = self.v = np.zeros((cfg["n_layer"], self.nkv, 0, hs), np.float32)
        self.reset()

    def reset(self):
        self.pos = 0  # positions >= pos in the cache are never read, so no need to clear them

    def grow_cache(self, n: int):
        """Make room for n positions in the KV cache (doubling, at most block_size)."""
        have = self.k.shape[2]
        if n > have:
            more = min(max(n, 2 * have), self.c["block_size"]) - have
            pad = np.zeros(self.k.shape[:2] + (more, self.hs), np.float32)
            self.k, self.v = np.concatenate([self.k, pad], 2), np.concatenate([self.v, pad], 2)

    def rms(self, x):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.c["norm_eps"])

    def norm(self, x, prefix):
        if self.c["norm"] == "rmsnorm":
            return self.rms(x)
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + self.c["norm_eps"]) * self.w[prefix + ".weight"]
        b = self.w.get(prefix + ".bias")
        return y if b is None else y + b

    def linear(self, x, prefix):
        y = x @ self.w[prefix + ".weight"].T
        b = self.w.get(prefix + ".bias")
        return y if b is None else y + b

    def rope(self, x, p0):  # x (nh, T, hs)
        f = np.outer(np.arange(p0, p0 + x.shape[1], dtype=np.float32), self.inv_freq)  # (T, hs/2)
        cos, sin = np.cos(f), np.sin(f)
        x1, x2 = x[..., : self.hs // 2], x[..., self.hs // 2:]
        return np.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)

    def forward(self, ids: list[int]) -> np.ndarray:
        """Feed ids at positions pos..; return the logits (V,) of the last one."""
        c, w = self.c, self.w
        T, p0 = len(ids), self.pos
        nh, nkv, hs = self.nh, self.nkv, self.hs
        x = w["transformer.wte.weight"][ids]  # (T, C)
        if c["positional"] == "learned":
            x = x + w["transformer.wpe.weight"][p0:p0 + T]
        if c["embd_norm"]:
            x = self.norm(x, "transformer.ln_e")
        mask = np.tril(np.ones((T, p0 + T), bool), p0)
        self.grow_cache(p0 + T)
        for layer in range(c["n_layer"]):
            pre = f"transformer.h.{layer}."
            h = self.norm(x, pre + "ln_1")
            qkv = self.linear(h, pre + "attn.c_attn")
            q = qkv[:, : nh * hs].reshape(T, nh, hs).transpose(1, 0, 2)  # (nh, T, hs)
            k = qkv[:, nh * hs: (nh + nkv) * hs].reshape(T, nkv, hs).transpose(1, 0, 2)
            v = qkv[:, (nh + nkv) * hs:].reshape(T, nkv, hs).transpose(1, 0, 2)
            if c["positional"] == "rope":
                q, k = self.rope(q, p0), self.rope(k, p0)
            if c["qk_norm"]:
                q, k = self.rms(q), self.rms(k)
            self.k[layer, :, p0:p0 + T], self.v[layer, :, p0:p0 + T] = k, v
            K = np.repeat(self.k[layer, :, : p0 + T], nh // nkv, axis=0)  # (nh, p0+T, hs)
            V = np.repeat(self.v[layer, :, : p0 + T], nh // nkv, axis=0)
            att = q @ K.transpose(0, 2, 1) / np.sqrt(hs)  # (nh, T, p0+T)
            att = np.where(mask, att, -np.inf)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            y = (att @ V).transpose(1, 0, 2).reshape(T, nh * hs)
            x = x + self.linear(y, pre + "attn.c_proj")
            h = self.linear(self.norm(x, pre + "ln_2"), pre + "mlp.c_fc")
            if c["mlp"] == "gelu":
                h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
            elif c["mlp"] == "relu2":
                h = np.maximum(h, 0) ** 2
            else:
                a, g = np.split(h, 2, axis=-1)
                h = a * g / (1 + np.exp(-g))
            x = x + self.linear(h, pre + "mlp.c_proj")
        self.pos += T
        logits = self.norm(x[-1:], "transformer.ln_f")[0] @ self.lm_head.T
        if c.get("logit_softcap"):
            logits = c["logit_softcap"] * np.tanh(logits / c["logit_softcap"])
        return logits


def generate(model: GPT, ids: list[int], max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, seed: int | None = None, stop: set[int] = frozenset(),
             top_p: float = 1.0):
    """Yield new token ids. The context is cropped to block_size exactly as gptforge's engine does.

    temperature >= 0 (0, or below float32's smallest normal number: greedy, as the engine); top_k
    >= 1 keeps the k most likely tokens (k >= the vocabulary: all); top_p in (0, 1] keeps the
    smallest set whose probability reaches p; seed >= 0 or None.
    Raises SystemExit if the model's logits are not finite (weights so large that they overflow).
    """
    rng = np.random.default_rng(seed)
    block = model.c["block_size"]
    seq = list(ids)[-block:]
    model.reset()
    with np.errstate(all="ignore"):  # overflow shows up as non-finite logits, reported below
        logits = model.forward(seq)
    for _ in range(max_new_tokens):
        if not np.isfinite(logits).all():
            raise SystemExit(f"the logits are not finite at position {len(seq)} (the weights overflow)")
        if temperature < np.finfo(np.float32).tiny:  # 0, or so small that logits / it overflow: greedy
            nxt = int(np.argmax(logits))
        else:
            z = logits.astype(np.float64) / temperature
            if top_k is not None and top_k < len(z):
                z[z < np.sort(z)[-top_k]] = -np.inf
            if top_p < 1.0:  # drop a token when the mass before it already reaches top_p, as the engine does
                order = np.argsort(-z, kind="stable")
                p = np.exp(z[order] - z[order[0]])
                p /= p.sum()
                z[order[np.cumsum(p) - p >= top_p]] = -np.inf
            p = np.exp(z - z.max())
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        if nxt in stop:
            return
        yield nxt
        seq.append(nxt)
        with np.errstate(all="ignore"):
            if len(seq) > block:  # refill the cache from the last block_size tokens
                model.reset()
                logits = model.forward(seq[-block:])
            else:
                logits = model.forward([nxt])


# --- command line -------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, like gptforge's own errors (no usage block)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind, ok, what):
    """An argparse type: parse with ``kind`` and accept only values for which ``ok(v)`` holds."""
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, not {s!r}")
        return v
    return parse


def main(argv=None) -> int:
    """The command line; returns the exit status: 0, or 2 with one line on stderr for any bad input."""
    ap = _Parser(description="Generate text from a gptforge model.bin using only numpy.")
    ap.add_argument("model", help="model.bin written by `gptforge export`")
    ap.add_argument("--prompt", default="", help="prompt text (default: start a new document)")
    ap.add_argument("--special", choices=["ordinary", "allow"], default="ordinary",
                    help="special-token strings in the prompt (e.g. <|endoftext|>): plain text (default) "
                         "or special tokens")
    ap.add_argument("--max-new-tokens", type=_number(int, lambda v: v >= 0, "an integer >= 0"), default=200)
    ap.add_argument("--temperature", type=_number(float, lambda v: 0 <= v < math.inf, "a finite number >= 0"),
                    default=0.8, help="0 = greedy (default 0.8)")
    ap.add_argument("--top-k", type=_number(int, lambda v: v >= 1, "an integer >= 1"), default=None,
                    help="keep the k most likely tokens; k >= the vocabulary size keeps them all")
    ap.add_argument("--top-p", type=_number(float, lambda v: 0 < v <= 1, "a number in (0, 1]"), default=1.0,
                    help="keep the smallest set of tokens whose probability reaches p (default 1: all)")
    ap.add_argument("--seed", type=_number(int, lambda v: v >= 0, "an integer >= 0"), default=None)
    ap.add_argument("--ids", action="store_true", help="print the generated token ids as JSON instead")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        print(f"{ap.prog}: error: {e.code}", file=sys.stderr)  # one line, exit code 2 (as argparse)
        return 2


def run(args) -> int:
    header, weights = load(args.model)
    tok = Tokenizer(header["tokenizer"])
    model = GPT(header["model"], weights)
    eot = tok.special.get("<|endoftext|>")
    try:
        encode = tok.encode if args.special == "allow" else tok.encode_ordinary
        ids = encode(args.prompt) if args.prompt else [eot] if eot is not None else None
    except ValueError as e:  # a character outside a char vocabulary; text that is not UTF-8
        raise SystemExit(f"{args.model}: cannot encode the prompt: {e}") from None
    if not ids:
        raise SystemExit(f"{args.model}: this tokenizer has no <|endoftext|>; give --prompt")
    stop = {eot} if eot is not None else set()
    gen = generate(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.seed, stop, args.top_p)
    try:
        if args.ids:
            print(json.dumps(list(gen)))
            return 0
        import codecs

        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sys.stdout.write(args.prompt)
        for i in gen:
            sys.stdout.write(dec.decode(tok.decode_bytes([i])))
            sys.stdout.flush()
        sys.stdout.write(dec.decode(b"", final=True) + "\n")
        return 0
    except SystemExit as e:  # non-finite logits: name the file whose weights caused them
        raise SystemExit(f"{args.model}: {e.code}") from None


if __name__ == "__main__":
    raise SystemExit(main())
