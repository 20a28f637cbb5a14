"""The built-in Shakespeare corpus and streamed user corpora."""

import hashlib
import json
import re

import pytest

from gptforge.data import corpus as corpus_mod
from gptforge.data import shakespeare
from gptforge.data.corpus import open_corpus
from gptforge.errors import UserError


def test_shakespeare_is_37_plays_with_documented_size_and_hash():
    assert len(shakespeare.play_files()) == 37
    assert "edward-iii" not in shakespeare.play_files()
    text = shakespeare.corpus_text()
    data = text.encode("utf-8")
    assert len(data) == shakespeare.SIZE_BYTES == 4_689_760
    assert hashlib.sha256(data).hexdigest() == shakespeare.SHA256
    assert len(set(text)) == 74 and text.isascii()


def test_shakespeare_split_is_by_whole_plays():
    train = {n for n, _ in shakespeare.plays("train")}
    val = {n for n, _ in shakespeare.plays("val")}
    assert val == set(shakespeare.VAL_PLAYS) and not (train & val) and len(train) == 33
    assert shakespeare.corpus_text("train") + shakespeare.corpus_text("val") != ""
    val_bytes = len(shakespeare.corpus_text("val").encode())
    assert 0.08 < val_bytes / shakespeare.SIZE_BYTES < 0.12


def test_shakespeare_follows_tiny_shakespeare_convention():
    text = shakespeare.corpus_text()
    blocks = text.split("\n\n")
    assert blocks[-1] == ""  # ends with a blank line
    for b in blocks[:-1]:
        speaker, *lines = b.split("\n")
        assert speaker.endswith(":") and lines, b[:200]
    # no markup survives: headings, stage directions, emphasis, escapes
    assert not re.search(r"[_*#\\\[\]]", text)
    assert "\nExeunt" not in text and "ACT I\n" not in text
    macbeth = dict(shakespeare.plays())["macbeth"]
    assert macbeth.startswith("First Witch:\nWhen shall we three meet again\n"
                              "In thunder, lightning, or in rain?\n\n")


def test_render_play_drops_directions_and_continues_speech():
    md = (
        "# Title\n\n## ACT I\n\n### SCENE I. A place.\n\n_Enter A and\nB_\n\n"
        "**A**  \nFirst line,  \n_[Aside]_ aside words  \n\n_Exit B_\n\nmore after\\--a pause\n\n"
        "**B**  \n_Dies_\n"
    )
    assert shakespeare.render_play(md) == "A:\nFirst line,\naside words\n\nA:\nmore after--a pause\n\n"


def _pieces(spec, **kw):
    c = open_corpus(str(spec))
    return c, list(c.pieces(**kw))


def test_text_file_split_is_nanogpt_90_10(tinyshakespeare):
    c, ps = _pieces(tinyshakespeare)
    train = "".join(p.text for p in ps if p.split == "train")
    val = "".join(p.text for p in ps if p.split == "val")
    assert (len(train), len(val)) == (1_003_854, 111_540)
    data = tinyshakespeare.read_text()
    assert train == data[: int(len(data) * 0.9)] and val == data[int(len(data) * 0.9):]
    assert c.sha256 == hashlib.sha256(tinyshakespeare.read_bytes()).hexdigest()


def test_streaming_in_small_chunks_loses_nothing(tmp_path, monkeypatch):
    text = "".join(f"line {i} \u00e9\u4e2d\U0001F600\n" for i in range(2000))
    f = tmp_path / "a.txt"
    f.write_text(text, encoding="utf-8")
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 97)
    _, ps = _pieces(f)
    assert len(ps) > 100
    assert "".join(p.text for p in ps) == text
    assert sum(p.doc_start for p in ps) == 2  # one document, seen once per split


def test_directory_glob_and_jsonl_are_one_document_per_file_or_line(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    for i in range(20):
        (d / ("sub" if i % 2 else "") / f"doc{i:02d}.txt").write_text(f"document {i}\n")
    (d / "ignored.md").write_text("not text")
    _, ps = _pieces(d)
    assert len(ps) == 20 and all(p.doc_start for p in ps)
    assert [p.split for p in ps].count("val") == 2  # every 10th document
    _, ps_glob = _pieces(f"{d}/**/*.txt")
    assert [p.text for p in ps_glob] == [p.text for p in ps]
    j = tmp_path / "c.jsonl"
    j.write_text("".join(json.dumps({"text": f"doc {i}", "id": i}) + "\n" for i in range(10)) + "\n")
    _, ps = _pieces(j)
    assert [p.text for p in ps] == [f"doc {i}" for i in range(10)]
    assert [p.split for p in ps] == ["train"] * 9 + ["val"]


def test_bad_inputs_raise_user_error_naming_the_problem(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        open_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="no .txt files"):
        (tmp_path / "empty").mkdir()
        open_corpus(str(tmp_path / "empty"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello\nworld \xff\xfe ok\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(bad))}: invalid UTF-8 at byte offset 12"):
        list(open_corpus(str(bad)).pieces())
    text = "".join(p.text for p in open_corpus(str(bad)).pieces(errors="replace"))
    assert text == "hello\nworld \ufffd\ufffd ok\n"
    j = tmp_path / "bad.jsonl"
    j.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: expected an object"):
        list(open_corpus(str(j)).pieces())
