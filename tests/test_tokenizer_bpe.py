"""BPETokenizer trained here: encoding (fast path vs pure-Python reference vs rustbpe), special
tokens, decoding, bits-per-byte support, and the saved file (round trip, corruption)."""

from __future__ import annotations

import json
import pickle

import pytest
import rustbpe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptforge.errors import UserError
from gptforge.tokenizer import EOT, SPECIAL_TOKENS, BPETokenizer, load_tokenizer
from gptforge.tokenizer.bpe import GPT4_SPLIT_PATTERN, bpe_encode_chunk

SAMPLES = [
    "",
    "Hello, world! How are you today?",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
    "Größe naïve café — Ελληνικά Привет 日本語 한국어 العربية",
    "👋🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🤖🤖 🇫🇷",
    "1234567890 3.14159 2,718,281 0xDEADBEEF",
    "  \t\t spaces   and\ttabs \r\n\r\n\n   ",
    "I'm sure you'll say they've done it; we'd've THOUGHT IT'S fine",
]


@pytest.fixture(scope="module")
def train_text() -> str:
    from gptforge.data.shakespeare import corpus_text

    return corpus_text("train")[:1_500_000]


@pytest.fixture(scope="module")
def tok(train_text) -> BPETokenizer:
    return BPETokenizer.train(train_text, vocab_size=2048)


def test_vocabulary_layout(tok):
    assert tok.vocab_size == 2048
    assert len(tok.merges) == 2048 - 256 - len(SPECIAL_TOKENS)
    # specials follow the ordinary tokens, in SPECIAL_TOKENS order, EOT first
    assert list(tok.special_tokens) == list(SPECIAL_TOKENS)
    assert list(tok.special_tokens.values()) == list(range(2048 - len(SPECIAL_TOKENS), 2048))
    assert tok.eot_id == 2048 - len(SPECIAL_TOKENS)
    for name in ("user", "assistant", "tool_call", "tool_output"):
        assert f"<|{name}_start|>" in tok.special_tokens and f"<|{name}_end|>" in tok.special_tokens
    assert tok.decode([tok.eot_id]) == EOT


def test_fast_reference_and_rustbpe_encoders_agree(tok, train_text):
    ref = rustbpe.Tokenizer()
    ref.train_from_iterator([train_text], vocab_size=2048 - len(SPECIAL_TOKENS), pattern=GPT4_SPLIT_PATTERN)
    from gptforge.data.shakespeare import corpus_text

    val = corpus_text("val")[:100_000]
    for text in SAMPLES + [val]:
        fast = tok.encode_ordinary(text)
        assert fast == ref.encode(text)
        assert fast == tok.reference_encode_ordinary(text)
        assert tok.decode(fast) == text


def test_reference_chunk_encoder_lowest_rank_first():
    ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"bc": 257, b"abc": 258, b"cab": 259}
    # "abc": "ab" (256) beats "bc" (257), then "ab"+"c" = "abc" (258)
    assert bpe_encode_chunk(b"abc", ranks) == [258]
    # "cabc": "ab" first -> c,ab,c; then "abc" (258) beats "cab" (259): the lowest rank wins
    assert bpe_encode_chunk(b"cabc", ranks) == [ord("c"), 258]
    assert bpe_encode_chunk(b"abab", ranks) == [256, 256]
    assert bpe_encode_chunk(b"", ranks) == []


def test_special_tokens_follow_tiktoken_semantics(tok):
    text = f"hello{EOT}world<|user_start|>"
    with pytest.raises(ValueError, match="special token"):
        tok.encode(text)
    with pytest.raises(ValueError, match="special token"):
        tok.reference_encode(text)
    ids = tok.encode(text, allowed_special="all")
    assert ids == tok.reference_encode(text, allowed_special="all")
    assert ids == (tok.encode_ordinary("hello") + [tok.eot_id] + tok.encode_ordinary("world")
                   + [tok.special_tokens["<|user_start|>"]])
    # only EOT allowed: the other special string still raises ...
    with pytest.raises(ValueError, match="user_start"):
        tok.encode(text, allowed_special={EOT})
    # ... unless it is not disallowed either, then it is ordinary text
    ids = tok.encode(text, allowed_special={EOT}, disallowed_special=())
    assert ids.count(tok.eot_id) == 1 and tok.special_tokens["<|user_start|>"] not in ids
    assert tok.encode(text, disallowed_special=()) == tok.encode_ordinary(text)
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|im_start|>"})


def test_encode_batch(tok):
    texts = SAMPLES * 3
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch([EOT], allowed_special="all") == [[tok.eot_id]]
    with pytest.raises(ValueError, match="special token"):
        tok.encode_batch(["fine", EOT])


def test_decode_errors_and_partial_characters(tok):
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        tok.decode([1, 2, tok.vocab_size])
    with pytest.raises(ValueError):
        tok.decode([-1])
    emoji = tok.encode("🤖")
    assert len(emoji) > 1  # not in the vocabulary of a Shakespeare tokenizer: 4 byte tokens
    assert tok.decode(emoji[:2]) == "\ufffd"  # cut mid-character: U+FFFD, as tiktoken


def test_token_bytes_counts_utf8_bytes(tok):
    tb = tok.token_bytes()
    assert tb.shape == (tok.vocab_size,) and tb.dtype.name == "int32"
    assert (tb[list(tok.special_tokens.values())] == 0).all()
    for text in SAMPLES:
        assert tb[tok.encode(text)].sum() == len(text.encode("utf-8"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_roundtrip_and_reference_on_arbitrary_unicode(tok, s):
    ids = tok.encode(s, disallowed_special=())
    assert tok.decode(ids) == s
    assert ids == tok.reference_encode_ordinary(s)


# --- persistence --------------------------------------------------------------------------------
def test_save_load_roundtrip(tok, tmp_path):
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    d = json.loads(path.read_text(encoding="utf-8"))  # human-readable, versioned JSON
    assert (d["format"], d["version"], d["kind"]) == ("gptforge.tokenizer", 1, "bpe")
    assert d["pattern"] == GPT4_SPLIT_PATTERN and d["merges"][0] == list(tok.merges[0])
    back = load_tokenizer(tmp_path / "tok")
    assert isinstance(back, BPETokenizer)
    assert back.fingerprint() == tok.fingerprint() and back.identity() == tok.identity()
    assert back.merges == tok.merges and back.special_tokens == tok.special_tokens
    for text in SAMPLES:
        assert back.encode(text) == tok.encode(text)
    # pickling (multiprocessing workers) drops and rebuilds the tiktoken object
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(SAMPLES[2]) == tok.encode(SAMPLES[2])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bad_merge", "bad_pattern", "clash", "version"])
def test_damaged_file_gives_user_error_naming_it(tok, tmp_path, damage):
    path = tok.save(tmp_path / "tokenizer.json")
    text = path.read_text(encoding="utf-8")
    d = json.loads(text)
    if damage == "truncate":
        path.write_text(text[: len(text) // 2], encoding="utf-8")
    elif damage == "garbage":
        path.write_bytes(b"\xff\xfe\x00 not json")
    else:
        if damage == "bad_merge":
            d["merges"][5] = [3, 10_000]  # refers to a token not yet defined
        elif damage == "bad_pattern":
            d["pattern"] = "(unclosed"
        elif damage == "clash":
            d["special_tokens"][EOT] = 300  # an ordinary token's id
        else:
            d["version"] = 99
        path.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(UserError, match=str(path).replace("\\", "\\\\")):
        load_tokenizer(path)


def test_missing_tokenizer(tmp_path):
    with pytest.raises(UserError, match="no tokenizer here"):
        load_tokenizer(tmp_path / "nothing")


def test_tie_break_option_changes_ids_not_the_encoding_quality(train_text):
    a = BPETokenizer.train(train_text[:300_000], vocab_size=600, special_tokens=())
    b = BPETokenizer.train(train_text[:300_000], vocab_size=600, special_tokens=(), tie_break="hf")
    assert a.merges != b.merges
    assert a.decode(a.encode(SAMPLES[2])) == b.decode(b.encode(SAMPLES[2])) == SAMPLES[2]


def test_docstring_examples():
    import doctest

    from gptforge.tokenizer import bpe, char, train

    for module in (bpe, char, train):
        assert doctest.testmod(module).failed == 0, module.__name__
