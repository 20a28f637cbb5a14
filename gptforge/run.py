#!/usr/bin/env python3
"""Run a GPT exported by `gptforge export` with nothing but numpy: the "run file" of an LLM.

    python run.py model.bin --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8

This file is self-contained on purpose: copy it anywhere next to a model.bin. It does not import
gptforge or torch. It reads the header (see gptforge/export.py for the layout), maps the weights,
and decodes one token at a time with a KV cache, batch size 1. With ``--temperature 0`` its output is
the same as `gptforge sample --temperature 0` (tested).

Tokenizer: char-level, or byte-level BPE (split with the ``regex`` module when installed; without it
the split pattern's \\p{L} and \\p{N} classes are approximated with Python's ``re``).
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys

import numpy as np

MAGIC = b"GPTFORGE"


# --- loading ------------------------------------------------------------------------------------
def load(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read model.bin: (header dict, {name: float32 array})."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:8] != MAGIC:
            raise SystemExit(f"{path}: not a gptforge model.bin")
        version, _, hlen = struct.unpack("<IIQ", head[8:])
        if version != 1:
            raise SystemExit(f"{path}: model.bin version {version} is not supported")
        header = json.loads(f.read(hlen).decode("utf-8"))
    start = -(-(24 + hlen) // 64) * 64
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    weights = {}
    for name, t in header["tensors"].items():
        buf = raw[start + t["offset"]: start + t["offset"] + t["nbytes"]]
        if len(buf) != t["nbytes"]:
            raise SystemExit(f"{path}: truncated (tensor {name})")
        if header["dtype"] == "bfloat16":  # bf16 is the top half of a float32
            a = (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = buf.view("<f4").astype(np.float32)
        weights[name] = a.reshape(t["shape"])
    return header, weights


# --- tokenizer ----------------------------------------------------------------------------------
def _stdlib_split(pattern: str):
    """The split pattern in Python's ``re`` (no \\p{..} classes): letters are ``[^\\W\\d_]``, numbers
    ``\\d``. For the GPT-2 and GPT-4 patterns this splits like ``regex`` except around numeric
    characters outside Nd (such as "²") and combining marks; other patterns need ``regex``."""
    import re

    for cls, alt in ((r"[^\r\n\p{L}\p{N}]", r"(?:[^\r\n\w]|_)"), (r"[^\s\p{L}\p{N}]", r"(?:[^\s\w]|_)"),
                     (r"\p{L}", r"[^\W\d_]"), (r"\p{N}", r"\d")):
        pattern = pattern.replace(cls, alt)
    if r"\p{" in pattern:
        raise SystemExit("this tokenizer's split pattern needs the regex module: pip install regex")
    return re.compile(pattern).findall


class Tokenizer:
    def __init__(self, d: dict):
        self.kind = d["kind"]
        self.special = {s: int(i) for s, i in d["special_tokens"].items()}
        if self.kind == "char":
            self.vocab = [c.encode("utf-8") for c in d["chars"]]
            self.stoi = {c: i for i, c in enumerate(d["chars"])}
        else:
            self.vocab = [base64.b64decode(b) for b in d["vocab"]]
            self.ranks = {b: i for i, b in enumerate(self.vocab)}
            try:
                import regex

                self.split = regex.compile(d["pattern"]).findall
            except ImportError:
                self.split = _stdlib_split(d["pattern"])
        for s, i in self.special.items():
            while len(self.vocab) <= i:
                self.vocab.append(b"")
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
            return [self.stoi[c] for c in text]
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
        return b"".join(self.vocab[i] for i in ids)


# --- the model ----------------------------------------------------------------------------------
class GPT:
    """Forward pass of gptforge's GPT (both presets) in float32 numpy, with a KV cache."""

    def __init__(self, cfg: dict, w: dict[str, np.ndarray]):
        self.c, self.w = cfg, w
        C, nh = cfg["n_embd"], cfg["n_head"]
        self.nh, self.nkv, self.hs = nh, cfg["n_kv_head"], C // nh
        self.lm_head = w.get("lm_head.weight", w["transformer.wte.weight"])  # tied: stored once
        if cfg["positional"] == "rope":
            inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, self.hs, 2, dtype=np.float32) / self.hs))
            f = np.outer(np.arange(cfg["block_size"], dtype=np.float32), inv)
            self.cos, self.sin = np.cos(f), np.sin(f)  # (block_size, hs/2)
        self.reset()

    def reset(self):
        L, T, hs = self.c["n_layer"], self.c["block_size"], self.hs
        self.k = np.zeros((L, self.nkv, T, hs), np.float32)
        self.v = np.zeros((L, self.nkv, T, hs), np.float32)
        self.pos = 0

    def norm(self, x, prefix):
        eps = self.c["norm_eps"]
        if self.c["norm"] == "rmsnorm":
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + eps) * self.w[prefix + ".weight"]
        b = self.w.get(prefix + ".bias")
        return y if b is None else y + b

    def linear(self, x, prefix):
        y = x @ self.w[prefix + ".weight"].T
        b = self.w.get(prefix + ".bias")
        return y if b is None else y + b

    def rope(self, x, p0):  # x (nh, T, hs)
        T = x.shape[1]
        cos, sin = self.cos[p0:p0 + T], self.sin[p0:p0 + T]
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
                eps = c["norm_eps"]
                q = q / np.sqrt((q * q).mean(-1, keepdims=True) + eps)
                k = k / np.sqrt((k * k).mean(-1, keepdims=True) + eps)
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
             top_k: int | None = None, seed: int | None = None, stop: set[int] = frozenset()):
    """Yield new token ids. The context is cropped to block_size exactly as gptforge's engine does."""
    rng = np.random.default_rng(seed)
    block = model.c["block_size"]
    seq = list(ids)[-block:]
    model.reset()
    logits = model.forward(seq)
    for _ in range(max_new_tokens):
        if temperature == 0:
            nxt = int(np.argmax(logits))
        else:
            z = logits.astype(np.float64) / temperature
            if top_k:
                z[z < np.sort(z)[-top_k]] = -np.inf
            p = np.exp(z - z.max())
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        if nxt in stop:
            return
        yield nxt
        seq.append(nxt)
        if len(seq) > block:  # refill the cache from the last block_size tokens
            model.reset()
            logits = model.forward(seq[-block:])
        else:
            logits = model.forward([nxt])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Generate text from a gptforge model.bin using only numpy.")
    ap.add_argument("model", help="model.bin written by `gptforge export`")
    ap.add_argument("--prompt", default="", help="prompt text (default: start a new document)")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--ids", action="store_true", help="print the generated token ids as JSON instead")
    args = ap.parse_args(argv)
    header, weights = load(args.model)
    tok = Tokenizer(header["tokenizer"])
    model = GPT(header["model"], weights)
    eot = tok.special.get("<|endoftext|>")
    ids = tok.encode(args.prompt) if args.prompt else [eot] if eot is not None else None
    if not ids:
        raise SystemExit("this tokenizer has no <|endoftext|>; give --prompt")
    stop = {eot} if eot is not None else set()
    gen = generate(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.seed, stop)
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


if __name__ == "__main__":
    raise SystemExit(main())
