"""Token shards: contents, metadata, parallel encoding, and the checks on open."""

import json

import numpy as np
import pytest

from gptforge.data.shards import open_shards, prepare, shard_dtype
from gptforge.errors import UserError
from gptforge.tokenizer import CharTokenizer


def test_shakespeare_char_shards_roundtrip(tmp_path):
    from gptforge.data import shakespeare

    tok = CharTokenizer.train(shakespeare.corpus_text())
    meta = prepare("shakespeare", tok, tmp_path, workers=2, progress=False)
    sh = open_shards(tmp_path, tok)
    assert meta == sh.meta and sh.dtype == np.uint16
    train, val = sh.tokens("train"), sh.tokens("val")
    assert isinstance(train, np.memmap)
    # plays are separated by <|endoftext|>: 33 train plays -> 32 separators
    eot = tok.eot_id
    assert int((train == eot).sum()) == 32 and int((val == eot).sum()) == 3
    assert tok.decode(val.tolist()) == "<|endoftext|>".join(t for _, t in shakespeare.plays("val"))
    st = meta["splits"]
    assert st["train"]["bytes"] + st["val"]["bytes"] == shakespeare.SIZE_BYTES
    assert st["train"]["tokens"] == len(train) and st["val"]["documents"] == 4
    assert meta["corpus"]["sha256"] == shakespeare.SHA256
    assert meta["tokenizer"]["sha256"] == tok.fingerprint()
    assert CharTokenizer.from_dict(json.loads((tmp_path / "tokenizer.json").read_text())).chars == tok.chars


def test_parallel_encoding_matches_serial(tmp_path, tinyshakespeare):
    tok = CharTokenizer.train(tinyshakespeare.read_text())
    prepare(str(tinyshakespeare), tok, tmp_path / "a", workers=1, progress=False)
    prepare(str(tinyshakespeare), tok, tmp_path / "b", workers=2, progress=False)
    for s in ("train", "val"):
        a, b = (open_shards(tmp_path / x).tokens(s) for x in "ab")
        assert np.array_equal(a, b)
    text = tinyshakespeare.read_text()
    assert np.array_equal(open_shards(tmp_path / "a").tokens("train"), tok.encode(text[:1_003_854]))


def test_dtype_follows_vocab_size():
    assert shard_dtype(65_536) == np.uint16
    assert shard_dtype(65_537) == np.uint32
    assert shard_dtype(200_019) == np.uint32


def test_open_shards_rejects_truncated_and_mismatched(tmp_path):
    (tmp_path / "c.txt").write_text("abcdefghij" * 100)
    tok = CharTokenizer.train("abcdefghij")
    prepare(str(tmp_path / "c.txt"), tok, tmp_path / "s", progress=False)
    other = CharTokenizer.train("abcdefghijk")
    with pytest.raises(UserError, match="different tokenizer"):
        open_shards(tmp_path / "s", other)
    with open(tmp_path / "s" / "val.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UserError, match=r"val.bin: 10 bytes, but meta.json says 100 tokens"):
        open_shards(tmp_path / "s")
    (tmp_path / "s" / "meta.json").write_text('{"format": "gptforge.sha')
    with pytest.raises(UserError, match=r"meta.json: corrupt"):
        open_shards(tmp_path / "s")


def test_empty_corpus_and_empty_split_fail_and_leave_nothing(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="corpus is empty"):
        prepare(str(tmp_path / "empty.txt"), CharTokenizer("a"), tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "meta.json").exists()
    assert not list((tmp_path / "o").glob("*.bin*"))


def test_char_outside_vocab_is_user_error(tmp_path):
    (tmp_path / "c.txt").write_text("abc\nxyz\n")
    with pytest.raises(UserError, match="'x'.*not in this char tokenizer"):
        prepare(str(tmp_path / "c.txt"), CharTokenizer("abc\n"), tmp_path / "o", workers=2, progress=False)


def test_char_tokenizer_adds_endoftext_only_for_several_documents(tinyshakespeare):
    from gptforge.data.shards import resolve_tokenizer

    single = resolve_tokenizer("char", str(tinyshakespeare))
    assert single.vocab_size == 65 and single.eot_id is None  # nanoGPT's shakespeare_char vocabulary
    assert single.encode("hii there") == [46, 47, 47, 1, 58, 46, 43, 56, 43]
    plays = resolve_tokenizer("char", "shakespeare")  # 37 documents
    assert plays.vocab_size == 75 and plays.eot_id == 74
