"""Hostile and broken inputs to the tokenizer: split patterns that drop text, lone surrogates,
and tokenizer.json files that must load cleanly or fail with one UserError naming the file."""

import json
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptforge.data.shards import prepare
from gptforge.data.train_bpe import train_on_corpus
from gptforge.errors import UserError
from gptforge.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

TEXT = "".join(f"First Citizen {i}:\nBefore we proceed any further, hear me speak.\n\n" for i in range(200))


@pytest.fixture
def corpus(tmp_path):
    f = tmp_path / "small.txt"
    f.write_text(TEXT, encoding="utf-8")
    return f


# --- 6. a custom split pattern must cover the text ---------------------------------------------
@pytest.mark.parametrize("pattern, dropped", [
    ("x", r"it drops 'First Citizen 0:\\nBefore we proceed any f'\.\.\. at character 0"),
    (".", r"it drops '\\n' at character 16"),
    (r"\w+", r"it drops ' ' at character 5"),
])
def test_pattern_that_drops_text_is_refused(corpus, pattern, dropped):
    with pytest.raises(UserError, match=r"does not cover the text: " + dropped):
        train_on_corpus(str(corpus), 300, pattern=pattern)
    with pytest.raises(UserError, match=r"does not cover the text: " + dropped):
        BPETokenizer.train(TEXT, 300, pattern=pattern)


def test_capturing_group_is_refused(corpus):
    with pytest.raises(UserError, match=r"capturing group.*\(\?:\.\.\.\)"):
        train_on_corpus(str(corpus), 300, pattern=r"(\w+)|\s+|.")
    # the same pattern with a non-capturing group trains on whole matches
    tok = BPETokenizer.train(TEXT, 300, pattern=r"(?:\w+)|\s+|.")
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_covering_custom_pattern_round_trips(corpus):
    tok, _ = train_on_corpus(str(corpus), 300, pattern=r"\w+|\s+|.")
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_prepare_refuses_a_saved_tokenizer_whose_pattern_drops_text(tmp_path, corpus):
    # a tokenizer.json written by hand or an older gptforge: encoding would silently drop text
    tok = BPETokenizer.train(TEXT, 300)
    d = json.loads(tok.to_json())
    d["pattern"] = r"\w+"
    (tmp_path / "t.json").write_text(json.dumps(d))
    bad = load_tokenizer(tmp_path / "t.json")
    with pytest.raises(UserError, match=r"the tokenizer drops text: \d+ bytes of corpus encode to tokens"):
        prepare(str(corpus), bad, tmp_path / "o", workers=1, progress=False)
    assert not (tmp_path / "o").exists()


# --- 5. lone surrogates -------------------------------------------------------------------------
def test_lone_surrogate_in_jsonl_when_training(tmp_path):
    f = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"hello world {i}"}) for i in range(30)]
    lines[7] = '{"text": "abc \\udfff tail"}'
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"d.jsonl:8: .*lone surrogate \(U\+DFFF\)"):
        train_on_corpus(str(f), 300)
    tok, info = train_on_corpus(str(f), 300, errors="replace")
    assert info["train_bytes"] > 0 and tok.encode("abc \ufffd") == tok.encode("abc \udfff")


def test_train_on_text_with_a_lone_surrogate_uses_replacement_character():
    tok = BPETokenizer.train(["abc \ud800 abc \ud800"] * 5, 256 + 5 + 9)
    assert tok.decode(tok.encode("abc \ud800")) == "abc \ufffd"


# --- loading tokenizer.json: clean load or one UserError, memory bounded by the file ---------------
def _save(tmp_path, d) -> str:
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(d), encoding="utf-8")
    return str(p)


@pytest.fixture(scope="module")
def good() -> dict:
    return json.loads(BPETokenizer.train(TEXT, 300).to_json())


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["special_tokens"].update({"<|x|>": 10**12}), r"leaves more than 1024 of the ids"),
    (lambda d: d.update(merges=[[0, 0]] + [[256 + i, 256 + i] for i in range(60)]), r"more than .* bytes"),
    (lambda d: d.update(version=True), r"version True is not supported"),
    (lambda d: d.update(merges=5), r"merges must be a list"),
    (lambda d: d.update(name=["x"]), r"must be strings"),
    (lambda d: d.update(special_tokens={"<|endoftext|>": 3.0}), r"integer ids"),
    (lambda d: d.pop("merges") and d.update(ranks=[1, 2]), r"base64 strings or null"),
])
def test_hostile_tokenizer_json_is_user_error(tmp_path, good, edit, message):
    d = json.loads(json.dumps(good))
    edit(d)
    path = _save(tmp_path, d)
    with pytest.raises(UserError, match=path + r": .*" + message):
        load_tokenizer(path)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"format": ' + b"1" * 5000 + b"}", b"\xff\xfe"])
def test_unparseable_tokenizer_json_is_user_error(tmp_path, raw):
    (tmp_path / "tokenizer.json").write_bytes(raw)
    with pytest.raises(UserError, match=r"tokenizer.json: corrupt tokenizer file"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_char_tokenizer_json_types_are_checked(tmp_path):
    d = json.loads(CharTokenizer("abc").to_json())
    d["chars"] = ["ab", "c"]
    with pytest.raises(UserError, match=r"tokenizer.json: corrupt.*chars must be a string"):
        load_tokenizer(_save(tmp_path, d))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
_special = st.dictionaries(st.text(max_size=6), st.integers(-5, 2**40) | st.sampled_from([10**12, 2**31]),
                           max_size=3)
_merges = st.lists(st.lists(st.integers(-1, 400), min_size=2, max_size=2), max_size=80)
# valid merges of recent tokens: offsets (0, 0) double the newest token each time, so 40 of them
# would ask for a terabyte if nothing bounded it
_chained = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=80).map(
    lambda offs: [[max(0, 255 + i - a), max(0, 255 + i - b)] for i, (a, b) in enumerate(offs)])
_edits = st.one_of(
    st.tuples(st.just("special_tokens"), _special),
    st.tuples(st.just("merges"), _merges | _chained),
    st.tuples(st.sampled_from(["pattern", "special_tokens", "merges", "ranks", "chars", "name", "version",
                               "format"]), _json))


def _check_load(path, file_size: int):
    tracemalloc.start()
    try:
        try:
            tok = load_tokenizer(path)
        except UserError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            return
        tok.identity()  # sizes itself by vocab_size
        assert len(tok.token_bytes()) == tok.vocab_size
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # loading bounds merged token bytes at 16 MiB (see bpe.MIN_TOKEN_BYTES_BOUND) plus overhead
        assert peak < (48 << 20) + 1000 * file_size


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["bpe", "char", "other"]), edit=_edits)
def test_fuzzed_tokenizer_json_loads_cleanly_or_raises_user_error(tmp_path, good, kind, edit):
    field, value = edit
    d = json.loads(json.dumps(good)) if kind == "bpe" else json.loads(CharTokenizer("abc").to_json())
    if kind == "other":
        d["kind"] = value if isinstance(value, str) else "bpe"
    d[field] = value
    path = _save(tmp_path, d)
    _check_load(path, len(json.dumps(d)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_random_tokenizer_json_bytes_load_cleanly_or_raise_user_error(tmp_path, raw):
    p = tmp_path / "tokenizer.json"
    p.write_bytes(raw)
    _check_load(p, len(raw))


# --- the tokenizer commands: one line, and hints only where they fit ----------------------------
def _cli(capsys, *argv, stdin: str | None = None, monkeypatch=None):
    import io
    import sys

    from gptforge.cli import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tokenizer_train_refuses_an_out_file_before_training(tmp_path, corpus, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = _cli(capsys, "tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "300",
                        "--out", str(tmp_path / "afile"), "--no-progress")
    assert code == 2 and "afile: exists and is not a directory" in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_encode_hints_at_special_only_for_special_token_text(tmp_path, capsys):
    tok = CharTokenizer.train("abc <|endoftext>\n")
    tok.save(tmp_path / "t")
    code, _, err = _cli(capsys, "tokenizer", "encode", "--tokenizer", str(tmp_path / "t"), "--text", "abz")
    assert code == 2 and "'z'" in err and "--special" not in err  # an unknown character: no such hint
    code, _, err = _cli(capsys, "tokenizer", "encode", "--tokenizer", str(tmp_path / "t"), "--text",
                        "ab<|endoftext|>")
    assert code == 2 and "--special allow or --special ordinary" in err


def test_inspect_text_outside_a_char_vocab_is_one_line(tmp_path, corpus, capsys):
    tok = CharTokenizer.train(TEXT)
    tok.save(tmp_path / "t")
    code, _, err = _cli(capsys, "tokenizer", "inspect", "--tokenizer", str(tmp_path / "t"), "--corpus",
                        str(corpus), "--text", "Z\u20ac", "--reference-dir", str(tmp_path))
    assert code == 2 and "--text: character 'Z'" in err and err.count("\n") == 1


def test_decode_says_when_the_text_is_invisible(tmp_path, corpus, capsys, monkeypatch):
    tok, _ = train_on_corpus(str(corpus), 300)
    tok.save(tmp_path / "t")
    code, out, err = _cli(capsys, "tokenizer", "decode", "--tokenizer", str(tmp_path / "t"),
                          stdin="[1, 2, 3]", monkeypatch=monkeypatch)
    assert code == 0 and "3 invisible control character(s), such as U+0001" in err
    code, out, err = _cli(capsys, "tokenizer", "decode", "--tokenizer", str(tmp_path / "t"),
                          stdin=json.dumps(tok.encode("Before we")), monkeypatch=monkeypatch)
    assert code == 0 and err == ""
