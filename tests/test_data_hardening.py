"""Hostile and broken inputs to the data pipeline: shard directories written all-or-nothing,
meta.json and shard contents checked on open, lone surrogates in JSONL, long lines cut safely."""

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gptforge.data.corpus import open_corpus
from gptforge.data.shards import open_shards, prepare
from gptforge.errors import UserError
from gptforge.tokenizer import BPETokenizer, CharTokenizer

TEXT = "".join(f"Line {i}: to be, or not  to be;\n\tthat is the question {i * 7}.\n\n" for i in range(300))


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TEXT, vocab_size=256 + 40 + 9)


@pytest.fixture
def corpus(tmp_path):
    f = tmp_path / "small.txt"
    f.write_text(TEXT, encoding="utf-8")
    return f


def _snapshot(d):
    return {f.name: f.read_bytes() for f in sorted(d.iterdir())}


# --- 1. a shard directory is written all or nothing ----------------------------------------------
def test_failed_prepare_leaves_the_existing_shard_dir_untouched(tmp_path, corpus, bpe):
    out = tmp_path / "dx"
    prepare(str(corpus), CharTokenizer.train(TEXT, specials=()), out, workers=1, progress=False)
    before = _snapshot(out)
    bad = tmp_path / "inv.txt"
    bad.write_bytes(b"abc\xff\xfe def\n" * 10)
    with pytest.raises(UserError, match="inv.txt: invalid UTF-8"):
        prepare(str(bad), bpe, out, workers=1, progress=False)
    assert _snapshot(out) == before  # tokenizer.json not replaced, no *.bin.tmp
    assert sorted(f.name for f in tmp_path.iterdir()) == ["dx", "inv.txt", "small.txt"]  # no temp dir
    open_shards(out)


def test_successful_prepare_replaces_the_shard_dir(tmp_path, corpus, bpe):
    out = tmp_path / "dx"
    prepare(str(corpus), CharTokenizer.train(TEXT, specials=()), out, workers=1, progress=False)
    meta = prepare(str(corpus), bpe, out, workers=2, progress=False)
    sh = open_shards(out, bpe)
    assert sh.meta == meta and sh.tokenizer().fingerprint() == bpe.fingerprint()
    assert bpe.decode(sh.tokens("train").tolist() + sh.tokens("val").tolist()) == TEXT
    assert sorted(f.name for f in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["dx", "small.txt"]


def test_out_naming_a_file_or_a_foreign_directory_is_refused(tmp_path, corpus, bpe):
    with pytest.raises(UserError, match=r"small.txt: exists and is not a directory"):
        prepare(str(corpus), bpe, corpus, progress=False)
    assert corpus.read_text(encoding="utf-8") == TEXT
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.md").write_text("keep me")
    with pytest.raises(UserError, match=r"mine: holds files that are not shards \(notes.md\)"):
        prepare(str(corpus), bpe, d, progress=False)
    assert (d / "notes.md").read_text() == "keep me"


def test_open_shards_refuses_a_dir_mixing_two_preparations(tmp_path, corpus, bpe):
    # what a failed prepare of older versions left behind: the new tokenizer beside the old shards
    out = tmp_path / "dx"
    prepare(str(corpus), CharTokenizer.train(TEXT, specials=()), out, workers=1, progress=False)
    bpe.save(out / "tokenizer.json")
    with pytest.raises(UserError, match=r"tokenizer.json: not the tokenizer meta.json names"):
        open_shards(out)


# --- 3. meta.json and the ids are validated on open ----------------------------------------------
@pytest.fixture
def shard_dir(tmp_path, corpus):
    out = tmp_path / "s"
    prepare(str(corpus), CharTokenizer.train(TEXT, specials=()), out, workers=1, progress=False)
    return out


def _edit_meta(d, fn):
    meta = json.loads((d / "meta.json").read_text())
    fn(meta)
    (d / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["tokenizer"].update(vocab_size="abc"), r"vocab_size.*integer.*'abc'"),
    (lambda m: m["tokenizer"].update(vocab_size=1e12), r"vocab_size.*integer.*1000000000000.0"),
    (lambda m: m["tokenizer"].update(vocab_size=10**12), r"vocab_size.*\[1, 2\*\*32\]"),
    (lambda m: m["tokenizer"].update(vocab_size=5), r"max_id.*below vocab_size 5"),
    (lambda m: m.pop("tokenizer"), r'"tokenizer" must be an object'),
    (lambda m: m["splits"]["train"].update(file="../../small.txt"), r"file name inside the shard dir"),
    (lambda m: m.update(dtype="float64"), r"'float64', but a vocabulary of \d+ is stored as uint16"),
    (lambda m: m["splits"]["val"].update(tokens=-3), r"splits.val.tokens.*>= 0"),
    (lambda m: m["splits"]["val"].update(tokens=True), r"splits.val.tokens.*>= 0"),
    (lambda m: m.update(version=True), r"version True is not supported"),
    (lambda m: m["splits"].pop("val"), r'"splits.val" must be an object'),
])
def test_open_shards_validates_meta(shard_dir, edit, message):
    _edit_meta(shard_dir, edit)
    with pytest.raises(UserError, match=r"meta.json: .*" + message):
        open_shards(shard_dir)


def test_open_shards_finds_ids_outside_the_vocabulary(shard_dir):
    vocab = json.loads((shard_dir / "meta.json").read_text())["tokenizer"]["vocab_size"]
    ids = np.fromfile(shard_dir / "train.bin", dtype=np.uint16)
    ids[1234] = vocab + 7  # same size, so only the contents are wrong
    ids.tofile(shard_dir / "train.bin")
    with pytest.raises(UserError, match=rf"train.bin: token 1234 has id {vocab + 7}, but the vocabulary"):
        open_shards(shard_dir)
    # shards written before max_id was recorded are scanned in full
    _edit_meta(shard_dir, lambda m: [m["splits"][s].pop("max_id") for s in ("train", "val")])
    with pytest.raises(UserError, match=r"train.bin: token 1234"):
        open_shards(shard_dir)


def test_meta_records_max_id_per_split(shard_dir):
    meta = open_shards(shard_dir).meta
    for s in ("train", "val"):
        assert meta["splits"][s]["max_id"] == int(open_shards(shard_dir).tokens(s).max())


# --- 5. lone surrogates in JSONL -------------------------------------------------------------
def test_lone_surrogate_in_jsonl(tmp_path, bpe):
    f = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"document {i} is here"}) for i in range(20)]
    lines[3] = '{"text": "abc \\ud800"}'
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"docs.jsonl:4: .*lone surrogate \(U\+D800\) at character 4"):
        prepare(str(f), bpe, tmp_path / "o", workers=2, progress=False)
    assert not (tmp_path / "o").exists()
    prepare(str(f), bpe, tmp_path / "o", errors="replace", workers=2, progress=False)
    train = open_shards(tmp_path / "o").tokens("train").tolist()
    assert "abc \ufffd" in bpe.decode(train)
    # a valid surrogate pair is one character (json.loads joins it), not an error
    f.write_text('{"text": "x \\ud83d\\ude00"}\n' * 20)
    assert {p.text for p in open_corpus(str(f)).pieces()} == {"x \U0001F600"}


def test_deeply_nested_or_huge_jsonl_line_is_user_error(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("[" * 100_000 + "\n")
    with pytest.raises(UserError, match=r"d.jsonl:1: not valid JSON"):
        list(open_corpus(str(f)).pieces())
    f.write_text('{"text": ' + "1" * 5000 + "}\n")
    with pytest.raises(UserError, match=r"d.jsonl:1: not valid JSON"):
        list(open_corpus(str(f)).pieces())


# --- 12. long lines are cut where encoding is unaffected ------------------------------------------
LONG_LINE = "".join(f"word{i % 97}  and {'x' * (i % 13)},then\t{i} " for i in range(3000))  # no newline


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_pieces_of_a_long_line_encode_like_the_whole(tmp_path, pattern):
    tok = BPETokenizer.train(LONG_LINE[:20_000], vocab_size=256 + 200 + 9, pattern=pattern)
    text = LONG_LINE + "\n\n  indented\n\nnext " + LONG_LINE[:5000] + "\n \n\nend"
    f = tmp_path / "long.txt"
    f.write_text(text, encoding="utf-8")
    ps = [p.text for p in open_corpus(str(f)).pieces(val_fraction=0.5, chunk_bytes=256)
          if p.split == "train"]
    assert len(ps) > 100 and max(map(len, ps)) <= 2 * 256  # pending bytes + one read
    whole = "".join(ps)
    assert [i for p in ps for i in tok.encode(p)] == tok.encode(whole)


def test_prepare_with_small_pieces_equals_encoding_the_whole(tmp_path, bpe):
    f = tmp_path / "long.txt"
    f.write_text(LONG_LINE, encoding="utf-8")
    prepare(str(f), bpe, tmp_path / "o", workers=1, progress=False, chunk_bytes=300)
    sh = open_shards(tmp_path / "o")
    train = sh.tokens("train").tolist()
    assert train == bpe.encode(bpe.decode(train))


def test_a_line_without_whitespace_still_streams(tmp_path):
    f = tmp_path / "blob.txt"
    f.write_text("é" * 1000, encoding="utf-8")
    ps = [p.text for p in open_corpus(str(f)).pieces(chunk_bytes=99)]
    assert "".join(ps) == "é" * 1000 and len(ps) > 10


# --- property: meta.json never crashes open_shards or allocates by what it claims ----------------
@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "c.txt").write_text(TEXT, encoding="utf-8")
    prepare(str(d / "c.txt"), CharTokenizer.train(TEXT), d / "s", workers=1, progress=False)
    return d / "s"


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
_fields = ["format", "version", "dtype", "tokenizer", "tokenizer.vocab_size", "tokenizer.sha256",
           "tokenizer.eot_id", "corpus", "splits", "splits.train", "splits.train.file",
           "splits.val.tokens", "splits.train.max_id", "splits.val.documents"]


def _mutate(meta: dict, field: str, value):
    *parents, last = field.split(".")
    d = meta
    for k in parents:
        d = d[k]
    if value is _DELETE:
        d.pop(last, None)
    else:
        d[last] = value


_DELETE = object()


def _check_open(d):
    tracemalloc.start()
    try:
        try:
            sh = open_shards(d)
        except UserError as e:
            assert str(d) in str(e) and "\n" not in str(e)
            return
        for s in ("train", "val"):
            assert int(sh.tokens(s).max()) < sh.meta["tokenizer"]["vocab_size"]
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 64 << 20  # the shard files are ~30 kB; a claimed vocab of 1e12 must not count


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_fields), value=_json | st.just(_DELETE) | st.sampled_from(
    [10**12, 2**32, 2**32 + 1, 0, -1, "uint32", "float64", "../c.txt", "/etc/passwd", "meta.json", "."]))
@example(field="splits.train.file", value="\n")  # found by CI's run: the name echoed raw, over two lines
@example(field="version", value="\n")
def test_fuzzed_meta_json_loads_cleanly_or_raises_user_error(fuzz_dir, field, value):
    good = (fuzz_dir / "meta.json").read_text()
    meta = json.loads(good)
    try:
        _mutate(meta, field, value)
    except (KeyError, TypeError):
        return  # a parent was replaced by a non-object earlier: nothing to test
    try:
        (fuzz_dir / "meta.json").write_text(json.dumps(meta))
        _check_open(fuzz_dir)
    finally:
        (fuzz_dir / "meta.json").write_text(good)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_random_meta_json_bytes_load_cleanly_or_raise_user_error(fuzz_dir, raw):
    good = (fuzz_dir / "meta.json").read_bytes()
    try:
        (fuzz_dir / "meta.json").write_bytes(raw)
        _check_open(fuzz_dir)
    finally:
        (fuzz_dir / "meta.json").write_bytes(good)
