"""`gptforge explore`: the data sorted by loss, with flags beside the loss.

"When you sort your dataset descending by loss you are guaranteed to find something unexpected"
(Karpathy). Each unit of the data (a document; a window of ~``window_bytes`` cut at line breaks when a
document is longer than ``max_doc_bytes``, so a single-file corpus is scored window by window; an
SFT conversation) is scored by a trained model in bits per UTF-8 byte, and flagged:

- ``duplicate``: the same text (whitespace-trimmed) as an earlier unit (sha1);
- ``near_duplicate``: Jaccard similarity >= ``near_threshold`` (0.7) of word 5-gram shingles with an
  earlier unit, estimated with MinHash LSH (datasketch; Broder 1997);
- ``high_entropy``: a hex string of >= 16 characters, or a token of >= 20 letters/digits/``+/=_-``
  mixing cases and digits at >= 4 bits of entropy per character (hashes, base64, random ids);
- ``unusual_chars``: characters outside the corpus's usual set (those making up at least 1 in
  100,000 of its characters; a first, cheap pass counts them).

Memory is bounded for a corpus larger than RAM: units stream through; kept per unit are a short
record (no text) and, for the ``top`` highest, lowest and first flagged units, their tokens and
per-token losses; the duplicate index holds a sha1 and a MinHash signature per unit.

Outputs in ``out``: ``index.html`` (static, no scripts from elsewhere: tokens coloured by loss),
``explore.json`` (summary and the shown units) and ``units.jsonl`` (every unit, highest loss first).
"""

from __future__ import annotations

import hashlib
import heapq
import html
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptforge.chat.render import render
from gptforge.chat.sources import conversations
from gptforge.data.corpus import open_corpus
from gptforge.data.shards import document_spans, open_shards
from gptforge.errors import UserError
from gptforge.io import atomic_write


@dataclass
class Unit:
    """A scored unit of data. ids: its tokens, starting with ``<|endoftext|>`` (the context every
    document starts from) when the tokenizer has one; mask: 1 where ids[k] is a scored target (None:
    all but the first); source: where it came from, for people."""

    source: str
    text: str
    ids: list[int]
    mask: list[int] | None = None


# --- units ------------------------------------------------------------------------------
def windows(text: str, window_bytes: int) -> Iterator[str]:
    """``text`` cut into pieces of about ``window_bytes`` UTF-8 bytes at line breaks (mid-line only
    where a line is longer than that)."""
    buf, size = [], 0
    for line in text.splitlines(keepends=True):
        for i in range(0, len(line), window_bytes):  # a giant line is cut by characters
            part = line[i:i + window_bytes]
            n = len(part.encode("utf-8"))
            if size + n > window_bytes and buf:
                yield "".join(buf)
                buf, size = [], 0
            buf.append(part)
            size += n
    if buf:
        yield "".join(buf)


def corpus_units(spec: str, tok, window_bytes: int = 2048, max_doc_bytes: int = 8192) -> Iterator[Unit]:
    """Units of a corpus (``gptforge.data.corpus`` spec: built-in name, file, directory, JSONL, glob),
    both splits: whole documents up to ``max_doc_bytes``, longer ones in windows. Streams: at most
    one document (or ``max_doc_bytes`` plus a piece of one) is held at a time.

    Raises:
        UserError: a corpus that cannot be read.
    """
    start = [] if tok.eot_id is None else [tok.eot_id]
    doc, text, win = -1, "", 0  # the document, its text not yet in a unit, its windows so far

    def windowed(texts: Iterable[str]) -> Iterator[Unit]:
        nonlocal win
        for w in texts:
            yield Unit(f"doc {doc} window {win}", w, start + tok.encode_ordinary(w))
            win += 1

    for piece in itertools.chain(open_corpus(spec).pieces(chunk_bytes=1 << 20), [None]):
        if piece is None or piece.doc_start:  # the end of document `doc` (none before the first)
            if doc >= 0 and win == 0 and len(text.encode("utf-8")) <= max_doc_bytes:
                yield Unit(f"doc {doc}", text, start + tok.encode_ordinary(text))
            else:
                yield from windowed(windows(text, window_bytes))
            if piece is None:
                return
            doc, text, win = doc + 1, "", 0
        text += piece.text
        if len(text.encode("utf-8")) > max_doc_bytes:  # too long for one unit: emit its full windows
            *full, text = windows(text, window_bytes)
            yield from windowed(full)


def shard_units(shard_dir: str, split: str = "train", max_doc_tokens: int = 2048) -> Iterator[Unit]:
    """Units of a token shard split: the documents between ``<|endoftext|>`` ids (empty ones left
    out), longer than ``max_doc_tokens`` ones cut into windows of ``max_doc_tokens // 4`` tokens,
    each unit read from the memmap as it is needed.

    Raises:
        UserError: a bad shard directory or split.
    """
    shards = open_shards(shard_dir)
    tok = shards.tokenizer()
    if split not in ("train", "val"):
        raise UserError(f"--split {split}: choose train or val")
    tokens, eot = shards.tokens(split), tok.eot_id
    start = [] if eot is None else [eot]
    spans = [(0, len(tokens))] if eot is None else document_spans(tokens, eot)
    w = max_doc_tokens // 4
    for d, (a, b) in enumerate(spans):
        if 0 < b - a <= max_doc_tokens:
            ids = tokens[a:b].tolist()
            yield Unit(f"doc {d}", tok.decode(ids), start + ids)
        elif b > a:  # a long document: windows, each read when needed
            for k in range(a, b, w):
                ids = tokens[k:min(k + w, b)].tolist()
                yield Unit(f"doc {d} tokens {k - a}..{k - a + len(ids)}", tok.decode(ids), start + ids)


def sft_units(spec: str, tok, split: str = "train") -> Iterator[Unit]:
    """Units of SFT conversations (``gptforge sft --data`` spec): each conversation rendered, scored on
    what SFT trains on (the assistant's tokens).

    Raises:
        UserError: a bad spec or a tokenizer without chat tokens.
    """
    for i, conv in enumerate(conversations(spec, "test" if split == "val" else "train")):
        ids, mask = render(conv, tok)
        yield Unit(f"conversation {i}", tok.decode(ids), ids, mask)


# --- flags ------------------------------------------------------------------------------
_CANDIDATE = re.compile(r"[A-Za-z0-9+/=_\-]{16,}")
_HEX = re.compile(r"[0-9a-fA-F]{16,}")


def _entropy(s: str) -> float:
    """Shannon entropy of the characters of ``s``, bits per character."""
    return -sum(c / len(s) * math.log2(c / len(s)) for c in Counter(s).values())


def high_entropy_strings(text: str) -> list[str]:
    """Hashes, base64 and random ids in ``text`` (rules in the module docstring)."""
    return [s for s in _CANDIDATE.findall(text) if re.search(r"\d", s) and (
        _HEX.fullmatch(s) and re.search(r"[a-fA-F]", s)
        or len(s) >= 20 and re.search(r"[a-z]", s) and re.search(r"[A-Z]", s) and _entropy(s) >= 4.0)]


def _shingles(text: str, k: int = 5) -> set[bytes]:
    """Word k-grams (character 8-grams for texts of fewer than k words)."""
    words = text.lower().split()
    if len(words) < k:
        return {text[i:i + 8].encode("utf-8") for i in range(max(1, len(text) - 7))}
    return {" ".join(words[i:i + k]).encode("utf-8") for i in range(len(words) - k + 1)}


class Flagger:
    """Flags units as they stream past (each compared with the units before it). usual_chars: the
    corpus's usual characters (None: no unusual-character flag). Near duplicates: Jaccard >= 0.7,
    MinHash with 128 permutations."""

    def __init__(self, usual_chars: set[str] | None = None):
        from datasketch import MinHash, MinHashLSH

        self._minhash, self.num_perm = MinHash, 128
        self.lsh = MinHashLSH(threshold=0.7, num_perm=self.num_perm)
        self.seen: dict[bytes, int] = {}
        self.usual = usual_chars

    def flags(self, index: int, text: str) -> dict:
        out: dict = {}
        key = hashlib.sha1(text.strip().encode("utf-8")).digest()
        if key in self.seen:
            out["duplicate"] = self.seen[key]
        else:
            self.seen[key] = index
            mh = self._minhash(num_perm=self.num_perm)
            mh.update_batch(_shingles(text))
            if near := self.lsh.query(mh):
                out["near_duplicate"] = min(near)
            self.lsh.insert(index, mh)
        if he := high_entropy_strings(text):
            out["high_entropy"] = [s[:64] for s in he[:5]]
        if self.usual is not None and (odd := sorted(set(text) - self.usual)):
            out["unusual_chars"] = "".join(odd[:20])
        return out


def usual_characters(texts: Iterable[str], min_share: float = 1e-5, min_count: int = 5) -> set[str]:
    """The characters making up at least ``min_share`` of all characters in ``texts`` and occurring at
    least ``min_count`` times (so that in a small corpus one odd character is not usual by itself)."""
    counts = Counter(itertools.chain.from_iterable(texts))
    total = sum(counts.values())
    return {c for c, n in counts.items() if n >= max(min_share * total, min_count)}


# --- scoring ------------------------------------------------------------------------------
@torch.no_grad()
def token_losses(model: torch.nn.Module, seqs: list[list[int]], batch_rows: int = 16) -> list[np.ndarray]:
    """Per-token loss of each id sequence: float32 array of len(seq) - 1, nats, entry k for predicting
    seq[k + 1]. Sequences longer than block_size + 1 are scored in windows of block_size + 1 that
    overlap by one (each window's context restarts, as in gptforge.eval.bpb). Rows of several
    sequences share a forward pass (padded on the right, which causal attention never sees)."""
    T = model.config.block_size
    device = next(model.parameters()).device
    wins = [(s, o) for s, seq in enumerate(seqs) for o in range(0, max(len(seq) - 1, 1), T)]
    out = [np.zeros(max(len(seq) - 1, 0), dtype=np.float32) for seq in seqs]
    for i in range(0, len(wins), batch_rows):
        chunk = wins[i:i + batch_rows]
        L = max(min(len(seqs[s]) - 1 - o, T) for s, o in chunk)
        if L <= 0:
            continue
        x = torch.zeros(len(chunk), L, dtype=torch.long)
        y = torch.full((len(chunk), L), -1, dtype=torch.long)
        for r, (s, o) in enumerate(chunk):
            w = torch.tensor(seqs[s][o:o + L + 1], dtype=torch.long)
            x[r, :len(w) - 1], y[r, :len(w) - 1] = w[:-1], w[1:]
        logits, _ = model(x.to(device))
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="none",
                               ignore_index=-1).view(len(chunk), L).cpu().numpy()
        for r, (s, o) in enumerate(chunk):
            n = min(len(seqs[s]) - 1 - o, L)
            out[s][o:o + n] = nats[r, :n]
    return out


def unit_bpb(unit: Unit, nats: np.ndarray, token_bytes: np.ndarray) -> tuple[float, int, int]:
    """(bits per byte, scored tokens, bytes) of a unit: over scored targets that stand for text
    (special tokens count neither loss nor bytes, as in gptforge.train.evaluate)."""
    tgt = np.asarray(unit.ids[1:], dtype=np.int64)
    scored = np.ones(len(tgt), bool) if unit.mask is None else np.asarray(unit.mask[1:], bool)
    nb = token_bytes[tgt] * scored
    nbytes = int(nb.sum())
    bpb = float(nats[nb > 0].sum() / math.log(2) / nbytes) if nbytes else float("nan")
    return bpb, int(scored.sum()), nbytes


# --- the whole run ------------------------------------------------------------------------------
def _shown(unit: Unit, record: dict, nats: np.ndarray, tok) -> dict:
    """A record with what the page needs: each token's text, and its loss in bits per byte (None where
    it is not scored or stands for no text)."""
    tb = tok.token_bytes()
    toks = []
    for k, i in enumerate(unit.ids):
        scored = k > 0 and (unit.mask is None or unit.mask[k])
        bits = float(nats[k - 1]) / math.log(2) / tb[i] if scored and tb[i] else None
        toks.append([tok.decode_bytes([i]).decode("utf-8", errors="replace"), i, bits])
    return {**record, "tokens": toks}


def explore(model: torch.nn.Module, tok, units: Iterable[Unit], out: str | Path, top: int = 20,
            usual_chars: set[str] | None = None, batch_tokens: int = 8192, title: str = "explore",
            progress: Callable[[int], None] | None = None) -> dict:
    """Score and flag every unit, write the outputs (module docstring) to ``out``; returns the summary.

    progress: called with each unit's UTF-8 size in bytes once it is scored.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    tb = tok.token_bytes().astype(np.int64)
    flagger = Flagger(usual_chars)
    records: list[dict] = []
    high: list = []  # min-heap of (bpb, index, shown): the `top` highest
    low: list = []  # min-heap of (-bpb, -index, shown): the `top` lowest
    flagged: list[dict] = []
    T = model.config.block_size

    def batches(it: Iterator[Unit]) -> Iterator[list[Unit]]:
        buf, n = [], 0
        for u in it:
            buf.append(u)
            n += len(u.ids)
            if n >= batch_tokens:
                yield buf
                buf, n = [], 0
        if buf:
            yield buf

    for group in batches(iter(units)):
        losses = token_losses(model, [u.ids for u in group], batch_rows=max(1, batch_tokens // T))
        for u, nats in zip(group, losses, strict=True):
            i = len(records)
            bpb, n_tok, n_bytes = unit_bpb(u, nats, tb)
            rec = {"index": i, "source": u.source, "bpb": bpb, "tokens": n_tok, "bytes": n_bytes,
                   "flags": flagger.flags(i, u.text)}
            records.append(rec)
            if not math.isnan(bpb):
                for heap, key in ((high, (bpb, i)), (low, (-bpb, -i))):
                    if len(heap) < top or key > heap[0][:2]:
                        push = heapq.heappush if len(heap) < top else heapq.heapreplace
                        push(heap, (*key, _shown(u, rec, nats, tok)))
            if rec["flags"] and len(flagged) < top:
                flagged.append(_shown(u, rec, nats, tok))
            if progress:
                progress(len(u.text.encode("utf-8")))
    records.sort(key=lambda r: (-r["bpb"] if not math.isnan(r["bpb"]) else math.inf, r["index"]))
    with open(out / "units.jsonl", "w", encoding="utf-8") as f:  # large: streamed, not atomic
        f.writelines(json.dumps(r) + "\n" for r in records)
    kinds = ("duplicate", "near_duplicate", "high_entropy", "unusual_chars")
    scored = [r for r in records if not math.isnan(r["bpb"])]
    summary = {
        "title": title, "units": len(records),
        "bpb": (sum(r["bpb"] * r["bytes"] for r in scored) / sum(r["bytes"] for r in scored)
                if scored else None),
        "flags": {k: sum(k in r["flags"] for r in records) for k in kinds},
        "highest": [s for _, _, s in sorted(high, key=lambda h: (-h[0], h[1]))],
        "lowest": [s for _, _, s in sorted(low, key=lambda h: (-h[0], -h[1]))],
        "flagged": flagged,
    }
    atomic_write(out / "explore.json", json.dumps(summary, ensure_ascii=False))
    atomic_write(out / "index.html", render_html(summary))
    return summary


# --- the page ------------------------------------------------------------------------------
CSS = """body { font-family: sans-serif; margin: 2em; max-width: 70em; }
pre { white-space: pre-wrap; font-family: monospace; border: 1px solid #ccc; padding: .5em; }
h3 { margin-bottom: .2em; } .flag { color: #a00; font-weight: bold; }
.legend span { padding: 0 .4em; font-family: monospace; }"""


def _colour(bits: float | None) -> str:
    """Background for a token's loss: white (0 bits/byte) to red (8 and up); grey when unscored."""
    return "#eee" if bits is None else f"rgba(220,30,30,{min(max(bits / 8.0, 0.0), 1.0):.2f})"


def _unit_html(s: dict) -> str:
    flags = "; ".join(f"{k}: {v}" for k, v in s["flags"].items())
    head = (f"<h3>#{s['index']} {html.escape(s['source'])}: {s['bpb']:.3f} bits/byte, {s['bytes']} bytes"
            + (f' <span class="flag">{html.escape(flags)}</span>' if flags else "") + "</h3>")
    spans = "".join(f'<span style="background:{_colour(b)}" title="id {i}, '
                    f'{"unscored" if b is None else f"{b:.2f} bits/byte"}">{html.escape(t)}</span>'
                    for t, i, b in s["tokens"])
    return f"{head}<pre>{spans}</pre>\n"


def render_html(summary: dict) -> str:
    """The static page: highest-loss units, lowest-loss units, flagged units; every token coloured by
    its loss (hover for the id and the bits per byte). Text is escaped; no scripts."""
    f = summary["flags"]
    legend = "".join(f'<span style="background:{_colour(b)}">{b} </span>' for b in (0, 1, 2, 4, 6, 8))
    parts = [f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(summary['title'])}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(summary['title'])}</h1>",
             f"<p>{summary['units']:,} units, mean {summary['bpb'] or float('nan'):.3f} bits/byte; "
             "flagged: "
             + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in f.items()) + "</p>",
             f'<p class="legend">token loss, bits per byte: {legend} grey: not scored</p>']
    for key, heading in (("highest", "Highest loss"), ("lowest", "Lowest loss"), ("flagged", "Flagged")):
        parts.append(f"<h2>{heading}</h2>")
        parts += [_unit_html(s) for s in summary[key]] or ["<p>none</p>"]
    parts.append("</body></html>\n")
    return "".join(parts)
