"""Train a byte-level BPE tokenizer on a corpus: the train split of what ``open_corpus`` reads.

This sits in the data layer (it reads corpora) on top of the tokenizer layer (it trains BPE), so
the tokenizer package never imports the data package.
"""

from __future__ import annotations

import time

from gptforge.data.corpus import open_corpus
from gptforge.errors import UserError
from gptforge.tokenizer.bpe import SPECIAL_TOKENS, BPETokenizer, train_bpe, training_settings


def train_on_corpus(corpus_spec: str, vocab_size: int, pattern: str = "gpt4", tie_break: str = "rustbpe",
                    val_fraction: float = 0.1, errors: str = "strict",
                    progress: bool = False, text_column: str = "text") -> tuple[BPETokenizer, dict]:
    """Train a BPE tokenizer on the *train* split of a corpus (see ``gptforge.data.corpus``).

    ``vocab_size`` counts the 256 byte tokens, the merges and the special tokens.
    Returns ``(tokenizer, info)``; info has ``merges``, ``train_bytes``, ``chunks`` (distinct
    pre-split chunks) and ``seconds``.

    Raises:
        UserError: a vocabulary too small for bytes + special tokens, a split pattern with a
            capturing group or one that does not match every character, an empty train split
            (and whatever ``open_corpus`` and ``Corpus.pieces`` raise for a bad corpus).
    """
    from tqdm import tqdm

    training_settings(vocab_size, pattern, len(SPECIAL_TOKENS))  # a bad setting fails before any reading
    t0 = time.perf_counter()
    corpus = open_corpus(corpus_spec, text_column)
    bar = tqdm(total=corpus.total_bytes(), unit="B", unit_scale=True, desc="splitting",
               disable=not progress, leave=False)
    trained = 0

    def train_texts():
        nonlocal trained
        for piece in corpus.pieces(val_fraction, errors, on_bytes=bar.update):
            if piece.split == "train":
                trained += len(piece.text.encode("utf-8"))
                yield piece.text
        bar.close()

    try:
        tok, chunks = train_bpe(train_texts(), vocab_size, pattern, SPECIAL_TOKENS, tie_break, progress)
    finally:
        bar.close()
    if not chunks:
        raise UserError(f"{corpus_spec}: the train split is empty")
    return tok, {"merges": len(tok.merges), "train_bytes": trained, "chunks": chunks,
                 "seconds": time.perf_counter() - t0}
