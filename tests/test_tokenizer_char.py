"""CharTokenizer: nanoGPT's shakespeare_char vocabulary and the shared Tokenizer interface."""

from __future__ import annotations

import pytest
from helpers import SHARED, needs_shared  # noqa: E402

from gptforge.errors import UserError
from gptforge.tokenizer import EOT, CharTokenizer, load_tokenizer


@needs_shared
def test_matches_nanogpt_shakespeare_char():
    # nanoGPT data/shakespeare_char/prepare.py: chars = sorted(set(data)), vocab_size 65, and
    # "Let's build GPT" encodes "hii there" as [46, 47, 47, 1, 58, 46, 43, 56, 43]
    text = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.train(text)
    assert tok.chars == "".join(sorted(set(text))) and len(tok.chars) == 65
    assert tok.chars.startswith("\n !$&',-.3:;?ABC")
    assert tok.encode("hii there") == [46, 47, 47, 1, 58, 46, 43, 56, 43]
    assert tok.decode(tok.encode(text[:5000])) == text[:5000]
    assert tok.vocab_size == 66 and tok.eot_id == 65


def test_interface():
    tok = CharTokenizer.train(["hello ", "world"])
    assert tok.chars == " dehlorw"
    assert tok.encode("hello") == [3, 2, 4, 4, 5] == tok.encode_ordinary("hello")
    assert tok.encode_batch(["he", "lo"]) == [[3, 2], [4, 5]]
    with pytest.raises(ValueError, match="special token"):
        tok.encode(f"he{EOT}")
    assert tok.encode(f"he{EOT}lo", allowed_special="all") == [3, 2, tok.eot_id, 4, 5]
    assert tok.decode([3, 2, tok.eot_id]) == f"he{EOT}"
    with pytest.raises(ValueError, match="not in this char tokenizer's vocabulary"):
        tok.encode("hex")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([99])
    assert tok.token_bytes().tolist() == [1] * 8 + [0]
    assert CharTokenizer.train("é€😀").token_bytes().tolist() == [2, 3, 4, 0]  # UTF-8 bytes per char
    assert CharTokenizer("ab", specials=()).eot_id is None


def test_save_load(tmp_path):
    tok = CharTokenizer.train("To be, or not to be\n")
    back = load_tokenizer(tok.save(tmp_path / "c"))
    assert isinstance(back, CharTokenizer) and back.chars == tok.chars
    assert back.fingerprint() == tok.fingerprint()
    p = tmp_path / "c" / "tokenizer.json"
    p.write_text(p.read_text()[:-10])
    with pytest.raises(UserError, match=str(p)):
        load_tokenizer(p)
