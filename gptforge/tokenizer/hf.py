"""A BPE tokenizer in Hugging Face's form (``tokenizer.json`` of the ``tokenizers`` library), both ways.

Byte-level BPE there is: a vocabulary of token strings (each byte shown as one printable character,
GPT-2's ``bytes_to_unicode`` table), merges in rank order, a pre-tokenizer (our split regex, then
the byte-level mapping) and the special tokens as "added tokens". ``ignore_merges`` is set, so a
chunk that is itself a token becomes that token, as in tiktoken. Reference: the ``tokenizers``
library's tokenizer.json format and transformers' ``TikTokenConverter`` (convert_slow_tokenizer.py),
whose merge derivation ``merges_from_ranks`` follows.

``CHAT_TEMPLATE`` is gptforge's chat format (gptforge/chat/render.py) as a Jinja chat template, for
``tokenizer_config.json``: rendered and tokenized by transformers it gives the renderer's ids (tests
check this; one difference: a special-token string typed in a message becomes that special token
there, while the renderer keeps it plain text).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from gptforge.errors import UserError
from gptforge.tokenizer.base import EOT
from gptforge.tokenizer.bpe import GPT2_SPLIT_PATTERN, BPETokenizer
from gptforge.tokenizer.train import bytes_to_unicode


@cache
def byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE shows bytes 0..255 as (GPT-2's ``bytes_to_unicode``)."""
    return list(bytes_to_unicode().values())  # in byte order


def token_str(b: bytes) -> str:
    """Token bytes as a byte-level vocabulary string."""
    return "".join(map(byte_chars().__getitem__, b))


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Merges in rank order for a rank table without recorded merges (an OpenAI rank file): every
    split of each token into two tokens, ordered by the token's rank, then the parts' ranks
    (transformers' TikTokenConverter does the same)."""
    merges = []
    for token, rank in ranks.items():
        splits = [(token[:i], token[i:]) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        merges.extend((rank, ranks[a], ranks[b], a, b) for a, b in splits)
    merges.sort()
    return [(a, b) for *_, a, b in merges]


def hf_tokenizer_json(tok: BPETokenizer) -> dict:
    """The Hugging Face ``tokenizer.json`` (a dict) that encodes text to ``tok``'s ids.

    Raises:
        UserError: ``tok`` is not a BPE tokenizer (a char tokenizer has no Hugging Face form here).
    """
    if tok.kind != "bpe":
        raise UserError(f"a {tok.kind} tokenizer has no Hugging Face form (only BPE tokenizers are exported)")
    specials = set(tok.special_tokens.values())
    # bytes -> id; of two ids with the same bytes the lower wins, as in tiktoken
    ranks = {b: i for i, b in sorted(tok._decoder.items(), reverse=True) if i not in specials}
    merges = ([(tok._decoder[a], tok._decoder[b]) for a, b in tok.merges] if tok.merges is not None
              else merges_from_ranks(ranks))
    vocab = {token_str(b): i for b, i in sorted(ranks.items(), key=lambda kv: kv[1])}
    vocab.update(tok.special_tokens)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in tok.special_tokens.items()]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True, "vocab": vocab,
                  "merges": [f"{token_str(a)} {token_str(b)}" for a, b in merges]},
    }


# gptforge/chat/render.py's format; the system message's text opens the first user turn (if a user
# turn comes first), a list of parts is an assistant turn with tool calls
CHAT_TEMPLATE = (
    "{%- set offset = 1 if messages and messages[0]['role'] == 'system' else 0 -%}"
    "<|endoftext|>"
    "{%- for m in messages[offset:] -%}"
    "{%- if m['role'] == 'user' -%}"
    "<|user_start|>{{ messages[0]['content'] + '\\n\\n' if offset and loop.first else '' }}"
    "{{ m['content'] }}<|user_end|>"
    "{%- elif m['role'] == 'assistant' -%}"
    "<|assistant_start|>"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}{%- for p in m['content'] -%}"
    "{%- if p['type'] == 'text' -%}{{ p['text'] }}"
    "{%- elif p['type'] == 'tool_call' -%}<|tool_call_start|>{{ p['text'] }}<|tool_call_end|>"
    "{%- elif p['type'] == 'tool_output' -%}<|tool_output_start|>{{ p['text'] }}<|tool_output_end|>"
    "{%- else -%}{{ raise_exception('unknown part type ' + p['type']) }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|assistant_end|>"
    "{%- else -%}{{ raise_exception('unknown role ' + m['role']) }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}"
)


def from_hf_tokenizer(folder: str | Path) -> BPETokenizer:
    """A ``BPETokenizer`` from a Hugging Face model folder's byte-level BPE tokenizer: its
    ``tokenizer.json``, or GPT-2's ``vocab.json`` (OpenAI's name: ``encoder.json``). Ranks are the
    vocabulary ids (tiktoken's rule; right for GPT-2 and for gptforge's exports, whose ids follow the
    merges); the split pattern is the Split pre-tokenizer's regex, or GPT-2's for a plain ByteLevel one.

    Raises:
        UserError: no tokenizer files, or one that is not byte-level BPE (naming the file).
    """
    folder = Path(folder)
    f = folder / "tokenizer.json"
    try:
        if f.is_file():
            d = json.loads(f.read_text(encoding="utf-8"))
            model, pattern = d["model"], _hf_pattern(d.get("pre_tokenizer"), f)
            vocab = model["vocab"]
            if model.get("type") != "BPE" or not isinstance(vocab, dict):
                raise UserError(f"{f}: not a byte-level BPE tokenizer (model type {model.get('type')!r})")
            added = {a["content"]: a["id"] for a in d.get("added_tokens") or [] if a.get("special")}
            _check_merge_order(model.get("merges") or [], vocab, f)
        elif vocab_file := next((folder / n for n in ("vocab.json", "encoder.json")
                                 if (folder / n).is_file()), None):
            vocab, pattern = json.loads(vocab_file.read_text(encoding="utf-8")), GPT2_SPLIT_PATTERN
            added = {EOT: vocab[EOT]} if EOT in vocab else {}
        else:
            raise UserError(f"{folder}: no tokenizer.json or vocab.json (pass --tokenizer)")
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder}: cannot read its tokenizer ({type(e).__name__}: {e})") from None
    unbyte = {c: b for b, c in enumerate(byte_chars())}
    tokens = {}
    for s, i in vocab.items():
        if s in added:
            continue
        try:
            tokens[i] = bytes(unbyte[c] for c in s)
        except KeyError:
            raise UserError(f"{folder}: token {s!r} is not byte-level BPE") from None
    try:
        return BPETokenizer(tokens, pattern, added, name=folder.name or "hf")
    except ValueError as e:
        raise UserError(f"{folder}: unusable tokenizer ({e})") from None


def _check_merge_order(merges: list, vocab: dict[str, int], where: Path) -> None:
    """tiktoken merges the pair whose result has the lowest id, BPE the earliest merge: the same only
    when ids grow with the merges (GPT-2's do, and gptforge's exports). UserError if they do not."""
    last = -1
    for k, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        i = vocab.get(a + b)
        if i is None or i < last:
            what = "no token of the vocabulary" if i is None else f"id {i}, below the previous merge's {last}"
            raise UserError(f"{where}: merge {k} ({a!r}, {b!r}) gives {what}; gptforge needs ids in merge "
                            "order (tiktoken ranks)")
        last = i


def _hf_pattern(pre: dict | None, where: Path) -> str:
    """The split regex of a tokenizer.json pre-tokenizer: ByteLevel with use_regex (GPT-2's), or a
    Split by a regex followed by ByteLevel without it."""
    steps = (pre or {}).get("pretokenizers") or ([pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return GPT2_SPLIT_PATTERN
    if kinds == ["Split", "ByteLevel"] and "Regex" in steps[0].get("pattern", {}) \
            and steps[0].get("behavior") == "Isolated" and not steps[1].get("use_regex", True):
        return steps[0]["pattern"]["Regex"]
    raise UserError(f"{where}: pre-tokenizer {kinds} is not one gptforge reads "
                    "(ByteLevel, or Split + ByteLevel)")
