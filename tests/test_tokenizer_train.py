"""BPE training: merges identical to rustbpe's and to Hugging Face tokenizers' BpeTrainer.

The references are trained on the same texts with the same split pattern and vocabulary size; we
compare the token bytes id by id (so the ids, and therefore the merges, must be equal).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import rustbpe
from helpers import SHARED, needs_shared  # noqa: E402
from tokenizers import Regex, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from gptforge.errors import UserError
from gptforge.tokenizer import BPETokenizer
from gptforge.tokenizer.bpe import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, O200K_SPLIT_PATTERN
from gptforge.tokenizer.train import bytes_to_unicode, count_chunks, merges_to_tokens, train_merges

# Multilingual, emoji, digit- and whitespace-heavy text: multi-byte characters, ZWJ sequences,
# long digit runs (split in threes by the GPT-4 pattern), tabs/CRLF/space runs, contractions.
MIXED = [
    "Größe, Straße, naïve café — déjà vu. Ελληνικά κείμενα και ελληνικά! Привет, как дела? Всё хорошо.",
    "日本語のテキストと中文文本混合在一起。한국어 문장도 있습니다. हिन्दी पाठ भी है। العربية نص.",
    "Emoji: 👋🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🤖🤖🤖 ❤️‍🔥 🇫🇷🇯🇵 ✨✨",
    "Numbers 1234567890 3.14159 2,718,281 0x1F600 1e-9 007 99999999999 12:30:45 2024-01-02",
    "  indented\tline\t\twith   tabs \r\n\r\n\n\n    trailing spaces   \n\t\t\n",
    "I'm sure you'll say they've done it; we'd've THOUGHT IT'S fine. DON'T STOP, can't won't",
    "def f(x):\n    return x**2  # comment\n\nif __name__ == '__main__':\n    print(f(3))\n",
]


def mixed_texts(n: int = 40) -> list[str]:
    # vary the strings so that pairs have a spread of counts (and many ties at the tail)
    return [t.replace(" ", " " * (1 + i % 3)) + f" {i * 7919}" for i in range(n) for t in MIXED]


# --- references -------------------------------------------------------------------------------
def rustbpe_tokens(texts: list[str], vocab_size: int, pattern: str) -> list[bytes]:
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(texts, vocab_size=vocab_size, pattern=pattern)
    ranks = {bytes(b): i for b, i in tok.get_mergeable_ranks()}
    assert sorted(ranks.values()) == list(range(len(ranks)))
    return sorted(ranks, key=ranks.__getitem__)


def hf_tokens(texts: list[str], vocab_size: int, pattern: str) -> list[bytes]:
    """BpeTrainer set up as a byte-level BPE with all 256 bytes as the base vocabulary.

    HF's regex engine (Oniguruma, Ruby syntax) reads tiktoken's ``\\p{N}{1,3}+`` as "one or more
    runs of 1-3 digits", i.e. any number of digits, not as a possessive ``{1,3}``; the plain
    ``{1,3}`` is equivalent there (nothing follows it in its alternative) and means the same to
    both engines.
    """
    pattern = pattern.replace("{1,3}+", "{1,3}")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    out = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in out] == list(range(len(out)))
    return [bytes(to_byte[c] for c in t) for t in out]


def ours(texts: list[str], vocab_size: int, pattern: str, tie_break: str = "rustbpe") -> list[bytes]:
    return merges_to_tokens(train_merges(count_chunks(texts, pattern), vocab_size - 256, tie_break))


def assert_same_vocab_hf(got: list[bytes], hf: list[bytes]):
    """HF numbers the 256 bytes in its own order (ours keeps byte b at id b); merged tokens must
    match id for id."""
    assert len(got) == len(hf)
    assert sorted(got[:256]) == sorted(hf[:256])
    assert got[256:] == hf[256:]


def naive_merges(counts: Counter, n: int, order: list[int]) -> list[tuple[int, int]]:
    """Textbook BPE (minbpe-style): recount every pair after every merge; ties -> smallest pair
    under ``order``. Quadratic, but independent of the incremental bookkeeping under test."""
    words = {tuple(order[b] for b in w.encode()): c for w, c in counts.items()}
    merges = []
    for k in range(n):
        stats: Counter = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:], strict=False):
                stats[p] += c
        if not stats:
            break
        best = min(stats, key=lambda p: (-stats[p], p))
        merges.append(best)
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(256 + k)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    inv = {o: b for b, o in enumerate(order)}
    return [(inv.get(a, a) if a < 256 else a, inv.get(b, b) if b < 256 else b) for a, b in merges]


def hf_order() -> list[int]:
    chars = bytes_to_unicode()
    by_char = sorted(range(256), key=lambda b: ord(chars[b]))
    order = [0] * 256
    for i, b in enumerate(by_char):
        order[b] = i
    return order


# --- the algorithm ------------------------------------------------------------------------------
def test_docstring_example():
    merges = train_merges({"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}, 3)
    assert merges == [(ord("u"), ord("g")), (ord("u"), ord("n")), (ord("h"), 256)]


@pytest.mark.parametrize("tie_break", ["rustbpe", "hf"])
def test_incremental_counts_equal_full_recount(tie_break):
    # runs like "aaaaa" and "abab" exercise overlapping occurrences of the merged pair
    texts = mixed_texts(3) + ["aaaaa aaa aaaa abababab ba ab " * 3, "\n\n\n\n   \t\t"]
    counts = count_chunks(texts, GPT4_SPLIT_PATTERN)
    order = list(range(256)) if tie_break == "rustbpe" else hf_order()
    expected = naive_merges(counts, 300, order)
    assert train_merges(counts, 300, tie_break) == expected
    assert len(expected) == 300


def test_runs_out_of_pairs():
    counts = count_chunks("hello hello world", GPT4_SPLIT_PATTERN)
    merges = train_merges(counts, 1000)
    # every chunk ("hello", " hello", " world") ends as one token: 4 + 5 + 5 merges at most
    assert len(merges) == len(rustbpe_tokens(["hello hello world"], 1000, GPT4_SPLIT_PATTERN)) - 256
    toks = merges_to_tokens(merges)
    assert {b"hello", b" hello", b" world"} <= set(toks)


def test_count_chunks_splits_texts_separately():
    # one text: "a b" -> "a", " b"; a chunk never joins the end of one text to the next
    assert count_chunks(["a ", "b"], GPT4_SPLIT_PATTERN) == Counter({"a": 1, " ": 1, "b": 1})
    assert count_chunks("a b", GPT4_SPLIT_PATTERN) == Counter({"a": 1, " b": 1})


def test_errors():
    with pytest.raises(ValueError, match="tie_break"):
        train_merges({"ab": 1}, 1, tie_break="alphabetical")
    with pytest.raises(ValueError, match="invalid split pattern"):
        count_chunks("x", "(unclosed")
    with pytest.raises(UserError, match="too small"):
        BPETokenizer.train("hello", vocab_size=260)
    with pytest.raises(UserError, match="invalid split pattern"):
        BPETokenizer.train("hello", vocab_size=300, pattern="[a-")
    with pytest.raises(ValueError, match="not defined before"):
        merges_to_tokens([(65, 300)])


# --- parity with the references -------------------------------------------------------------
@pytest.fixture(scope="module")
def builtin_train_text() -> str:
    from gptforge.data.shakespeare import corpus_text

    return corpus_text("train")


@pytest.fixture(scope="module")
def builtin_counts(builtin_train_text) -> Counter:
    return count_chunks(builtin_train_text, GPT4_SPLIT_PATTERN)


def test_builtin_corpus_matches_rustbpe(builtin_train_text, builtin_counts):
    expected = rustbpe_tokens([builtin_train_text], 4096, GPT4_SPLIT_PATTERN)
    assert merges_to_tokens(train_merges(builtin_counts, 4096 - 256)) == expected


def test_builtin_corpus_matches_hf_tokenizers(builtin_train_text, builtin_counts):
    expected = hf_tokens([builtin_train_text], 4096, GPT4_SPLIT_PATTERN)
    got = merges_to_tokens(train_merges(builtin_counts, 4096 - 256, "hf"))
    assert_same_vocab_hf(got, expected)
    # the two rules really differ (only through ties): the same tokens up to the first tie
    # between pairs whose bytes the two numberings order differently, other ids after it
    default = merges_to_tokens(train_merges(builtin_counts, 4096 - 256))
    first = next(i for i, (a, b) in enumerate(zip(default, got, strict=True)) if a != b)
    assert 256 < first < 4096


@needs_shared
def test_tinyshakespeare_matches_both_references():
    text = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")
    counts = count_chunks(text, GPT2_SPLIT_PATTERN)
    expected = rustbpe_tokens([text], 2048, GPT2_SPLIT_PATTERN)
    assert merges_to_tokens(train_merges(counts, 2048 - 256)) == expected
    assert_same_vocab_hf(merges_to_tokens(train_merges(counts, 2048 - 256, "hf")),
                         hf_tokens([text], 2048, GPT2_SPLIT_PATTERN))


@pytest.mark.parametrize("pattern", [GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, O200K_SPLIT_PATTERN],
                         ids=["gpt2", "gpt4", "o200k"])
def test_mixed_scripts_emoji_digits_whitespace_match_both_references(pattern):
    texts = mixed_texts()
    # 1500 runs deep into count-1 pairs, where nearly every merge is decided by a tie
    assert ours(texts, 1500, pattern) == rustbpe_tokens(texts, 1500, pattern)
    assert_same_vocab_hf(ours(texts, 1500, pattern, "hf"), hf_tokens(texts, 1500, pattern))


def test_train_then_encode_matches_rustbpe_encode():
    texts = mixed_texts()
    tok = BPETokenizer.train(texts, vocab_size=1200, special_tokens=())
    ref = rustbpe.Tokenizer()
    ref.train_from_iterator(texts, vocab_size=1200, pattern=GPT4_SPLIT_PATTERN)
    for t in MIXED + ["unseen wörds 🦜 98765 \n\n  x"]:
        assert tok.encode(t) == ref.encode(t)
        assert tok.reference_encode_ordinary(t) == ref.encode(t)
