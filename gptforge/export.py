"""Export a GPT: gptforge's own one-file format for run.py (``export_model``), a Hugging Face folder
(``export_hf``) and a GGUF file for llama.cpp / Ollama (``export_gguf``); and the way back, a Hugging
Face folder as a gptforge run directory (``import_hf``).

The one-file format, "a parameters file plus a run file":

Layout of ``model.bin`` (all integers little-endian)::

    bytes 0..7     magic b"GPTFORGE"
    uint32         format version (1)
    uint32         0 (reserved)
    uint64         header length H in bytes
    H bytes        UTF-8 JSON header:
                     "model":     {"arch": "gpt", ...GPTConfig fields}
                     "dtype":     "float32" | "bfloat16"
                     "tensors":   {name: {"shape": [...], "offset": int, "nbytes": int}}
                                  offsets count from the start of the data section
                     "tokenizer": {"kind": "char", "chars": str, "special_tokens": {str: id}} or
                                  {"kind": "bpe", "pattern": str, "vocab": [base64 bytes of id 0..],
                                   "special_tokens": {str: id}}
    zero padding   to a multiple of 64 bytes
    data section   each tensor row-major, 64-byte aligned; bfloat16 stored as its raw 16 bits

``gptforge/run.py`` reads it with nothing but numpy (and ``regex`` if installed) and generates text.
Only GPT models are exported (the runner is a Transformer runner); tied embeddings are stored once.

The Hugging Face folder is what ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load with
no gptforge code (gptforge.models.hf for the weights, gptforge.tokenizer.hf for the tokenizer and
chat template); the GGUF file is llama.cpp's ``gpt2`` architecture, written with the ``gguf`` package
(llama.cpp's own writer; the tensor names and keys of its ``convert_hf_to_gguf.py`` for GPT-2).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import struct
import tempfile
from pathlib import Path

import torch

from gptforge.checkpoint import RunState, save_checkpoint
from gptforge.errors import UserError
from gptforge.io import atomic_open, atomic_write
from gptforge.models import GPT, model_config
from gptforge.models.hf import from_hf, gpt2_misfits, hf_arch, save_hf
from gptforge.tokenizer import EOT, SPECIAL_TOKENS, BPETokenizer, Tokenizer, load_tokenizer
from gptforge.tokenizer.bpe import SPLIT_PATTERNS
from gptforge.tokenizer.hf import CHAT_TEMPLATE, from_hf_tokenizer, hf_tokenizer_json

# run.py repeats these (it imports nothing from gptforge); tests/test_run_hardening.py checks they agree
MAGIC = b"GPTFORGE"
VERSION = 1
ALIGN = 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOKENIZER_KINDS = ("char", "bpe")


def portable_tokenizer(tok: Tokenizer) -> dict:
    """The tokenizer as run.py understands it: char tables or BPE token bytes + split pattern."""
    if tok.kind == "char":
        return {"kind": "char", "chars": tok.chars, "special_tokens": dict(tok.special_tokens)}
    specials = set(tok.special_tokens.values())
    n_ordinary = tok.vocab_size - len(specials)
    if any(i < n_ordinary for i in specials):
        raise UserError("cannot export a tokenizer whose special tokens are not at the end of the vocabulary")
    vocab = [base64.b64encode(tok.decode_bytes([i])).decode("ascii") for i in range(n_ordinary)]
    return {"kind": "bpe", "pattern": tok.pattern, "vocab": vocab, "special_tokens": dict(tok.special_tokens)}


def export_model(model: torch.nn.Module, tok: Tokenizer, out: str | os.PathLike,
                 dtype: str = "float32") -> dict:
    """Write ``model`` and ``tok`` to ``out`` in the format above; return {"bytes", "params"}.

    ``out`` is written atomically (gptforge.io), so a failed export leaves neither a partial ``out``
    nor a temporary file. dtype: "float32" or "bfloat16" (the weights' storage; bytes = 4 or 2 per param).

    Raises:
        UserError: the model is not a GPT, the tokenizer cannot be described portably or has more tokens
            than the model's vocab_size, dtype is unknown, or ``out`` is a directory or cannot be written.
    """
    cfg = model_config(model)
    if cfg.get("arch") != "gpt":
        raise UserError(f"export supports GPT models only, not {cfg.get('arch')!r}")
    if dtype not in DTYPES:
        raise UserError(f"export dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if tok.vocab_size > cfg["vocab_size"]:  # run.py would reject the file: ids past the embedding
        raise UserError(f"the tokenizer has {tok.vocab_size} tokens, more than the model's vocab_size "
                        f"{cfg['vocab_size']}")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a directory; give a file path such as {out / 'model.bin'}")
    # named_parameters lists a tied lm_head once, as transformer.wte (GPT has no persistent buffers)
    tensors = {name: t.detach().to("cpu", DTYPES[dtype]).contiguous() for name, t in model.named_parameters()}
    index, offset = {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        index[name] = {"shape": list(t.shape), "offset": offset, "nbytes": nbytes}
        offset += -(-nbytes // ALIGN) * ALIGN
    header = json.dumps({"model": cfg, "dtype": dtype, "tensors": index,
                         "tokenizer": portable_tokenizer(tok)}).encode("utf-8")
    prefix = MAGIC + struct.pack("<IIQ", VERSION, 0, len(header)) + header
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(out, "wb") as f:
            f.write(prefix + b"\0" * (-len(prefix) % ALIGN))
            for t in tensors.values():
                raw = (t.view(torch.int16) if dtype == "bfloat16" else t).numpy().tobytes()
                f.write(raw + b"\0" * (-len(raw) % ALIGN))
    except OSError as e:  # a full disk, a read-only folder
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    return {"bytes": out.stat().st_size, "params": sum(t.numel() for t in tensors.values())}


def _gpt(model: torch.nn.Module, tok: Tokenizer, what: str):
    if not isinstance(model, GPT):
        raise UserError(f"{what} export supports GPT models only, not {type(model).__name__}")
    if tok.kind != "bpe":
        raise UserError(f"{what} export needs a BPE tokenizer, not a {tok.kind} one")
    return model


def export_hf(model: torch.nn.Module, tok: Tokenizer, out: str | os.PathLike) -> Path:
    """Write folder ``out`` that transformers loads with no gptforge code: config.json and
    model.safetensors (float32; gptforge.models.hf), generation_config.json, tokenizer.json (the
    tokenizer in Hugging Face form) and tokenizer_config.json (special tokens, the context length and,
    when the tokenizer has the chat tokens, a chat template giving gptforge's chat format).
    Generation stops at ``<|endoftext|>`` and, for a chat tokenizer, ``<|assistant_end|>``.

    Raises:
        UserError: not a GPT or not a BPE tokenizer, an architecture neither GPT2LMHeadModel nor
            NanoChatForCausalLM fits (naming the settings), or ``out`` cannot be written.
    """
    model = _gpt(model, tok, "Hugging Face")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory (the hf format writes a folder)")
    eot = tok.eot_id
    tokenizer = json.dumps(hf_tokenizer_json(tok), ensure_ascii=False)
    save_hf(model, out, eot)
    chat = all(s in tok.special_tokens for s in SPECIAL_TOKENS)
    stops = [eot, tok.special_tokens["<|assistant_end|>"]] if chat else eot
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.block_size,
               "add_bos_token": False, "clean_up_tokenization_spaces": False}
    if eot is not None:
        tok_cfg |= {"bos_token": EOT, "eos_token": EOT}
    if chat:
        tok_cfg["chat_template"] = CHAT_TEMPLATE
    try:
        atomic_write(out / "tokenizer.json", tokenizer)
        write = lambda name, d: atomic_write(out / name, json.dumps(d, indent=2, ensure_ascii=False) + "\n")
        write("tokenizer_config.json", tok_cfg)
        write("generation_config.json", {"bos_token_id": eot, "eos_token_id": stops})
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    return out


# our split patterns -> llama.cpp's pre-tokenizer of that split (tokenizer.ggml.pre). "llama-bpe" is Llama 3's
# split; it differs from cl100k's (our gpt4) only on whitespace that ends a text and has a newline before
# other whitespace ("a\n " -> "\n", " " there, one chunk here): 4 of 20,000 fuzzed strings.
GGUF_PRE = {"gpt2": "gpt-2", "gpt4": "llama-bpe", "o200k": "gpt-4o"}
# our GPT-2-layout names -> llama.cpp's gpt2 tensor names (convert_hf_to_gguf.py's, by gguf's TensorNameMap)
GGUF_NAMES = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
              "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
              "lm_head.weight": "output.weight"}
GGUF_LAYER = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
              "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def gguf_name(name: str) -> str:
    """llama.cpp's name of our tensor ``name`` (transformer.h.3.mlp.c_fc.weight -> blk.3.ffn_up.weight)."""
    if name in GGUF_NAMES:
        return GGUF_NAMES[name]
    _, _, i, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{GGUF_LAYER[module]}.{kind}"


def export_gguf(model: torch.nn.Module, tok: Tokenizer, out: str | os.PathLike,
                dtype: str = "float32") -> dict:
    """Write ``model`` and ``tok`` as a GGUF file of llama.cpp's ``gpt2`` architecture; return {"bytes",
    "params"}. dtype "float16" stores the matrices in f16 and the norms and biases in f32 (llama.cpp's
    MOSTLY_F16); "float32" all in f32. Weights keep our (out, in) layout, which is GGUF's. The
    tokenizer goes in as llama.cpp's BPE vocabulary (tokens, types, merges, the split by name); BOS and
    EOS are ``<|endoftext|>``, llama.cpp's end-of-turn token ``<|assistant_end|>`` with a chat template
    when the tokenizer has the chat tokens. Written to a temporary file and renamed.

    Raises:
        UserError: not a GPT of the gpt2 preset's layout (llama.cpp has no architecture for the others;
            the message names what differs), a tokenizer split llama.cpp lacks, no ``<|endoftext|>``,
            a bad dtype, ``out`` cannot be written, or the gguf package is not installed.
    """
    try:
        import gguf
    except ImportError:
        raise UserError("gguf export needs the gguf package: pip install 'gptforge[gguf]'") from None
    model = _gpt(model, tok, "GGUF")
    c = model.config
    if misfits := gpt2_misfits(c):
        raise UserError(f"llama.cpp has no architecture for this GPT; gguf export writes its gpt2 one, which "
                        f"needs {', '.join(misfits)}; use --format hf")
    pre = next((GGUF_PRE[k] for k, v in SPLIT_PATTERNS.items() if v == tok.pattern), None)
    if pre is None:
        raise UserError(f"llama.cpp has no pre-tokenizer for the split pattern {tok.pattern[:60]!r}...; "
                        f"gguf export supports the {', '.join(GGUF_PRE)} patterns")
    if tok.eot_id is None:
        raise UserError(f"gguf export needs a tokenizer with {EOT} (llama.cpp's BOS/EOS)")
    if dtype not in ("float32", "float16"):
        raise UserError(f"gguf export dtype must be float32 or float16, not {dtype!r}")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a directory; give a file path such as {out / 'model.gguf'}")
    w = gguf.GGUFWriter(None, "gpt2")
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(c.mlp_hidden)
    w.add_block_count(c.n_layer)
    w.add_head_count(c.n_head)
    w.add_layer_norm_eps(c.norm_eps)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "float16" else gguf.LlamaFileType.ALL_F32)
    _gguf_tokenizer(w, tok, c.vocab_size, pre, hf_tokenizer_json(tok)["model"])
    if all(s in tok.special_tokens for s in SPECIAL_TOKENS):
        w.add_eot_token_id(tok.special_tokens["<|assistant_end|>"])
        w.add_chat_template(CHAT_TEMPLATE)
    params = 0
    # a tied lm_head is listed once, as token_embd: llama.cpp's gpt2 reuses it when output.weight is absent
    for name, t in model.named_parameters():
        a = t.detach().cpu().float().numpy()
        w.add_tensor(gguf_name(name), a.astype("float16") if dtype == "float16" and a.ndim == 2 else a)
        params += a.size
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    return {"bytes": out.stat().st_size, "params": params}


def _gguf_tokenizer(w, tok: Tokenizer, vocab_size: int, pre: str, bpe: dict) -> None:
    """llama.cpp's BPE vocabulary from ``bpe`` (tokenizer.json's byte-level BPE model of ``tok``), padded to
    the model's ``vocab_size``: unused ids (gaps, a second id for the same bytes) are [PADn]."""
    import gguf

    names = {i: s for s, i in bpe["vocab"].items()}
    specials = set(tok.special_tokens.values())
    tokens = [names.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = [gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL if i in names
             else gguf.TokenType.UNUSED for i in range(vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(bpe["merges"])
    w.add_bos_token_id(tok.eot_id)
    w.add_eos_token_id(tok.eot_id)
    w.add_add_bos_token(False)


def import_hf(source: str | os.PathLike, out: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
              add_chat_tokens: bool = False) -> Path:
    """Make run directory ``out`` from Hugging Face model folder ``source`` (GPT-2 family or NanoChat;
    gptforge.models.hf): one checkpoint (step 0, latest and best) holding the weights and the tokenizer,
    which ``sample``, ``chat``, ``serve``, ``eval``, ``export`` and ``sft --ckpt`` take. The tokenizer
    is the folder's (tokenizer.json, or GPT-2's vocab.json / encoder.json: ids are ranks) unless
    ``tokenizer`` (anything `load_tokenizer` reads) is given. The saved config holds the model's
    settings only; training settings take their defaults. ``add_chat_tokens``: give a tokenizer that
    lacks gptforge's chat tokens (GPT-2's) the missing ones after its last id, and the model as many new
    embedding and output rows, each the mean of the existing rows, so that SFT can teach them (the old
    tokens' logits are unchanged). Returns the checkpoint directory.

    Raises:
        UserError: an unsupported model or tokenizer, a tokenizer whose size is not the model's
            vocab_size, or ``out`` already holds checkpoints.
    """
    out = Path(out)
    if (out / "ckpt").exists():
        raise UserError(f"{out}: already holds checkpoints; give a new run directory")
    model = from_hf(Path(source))
    tok = load_tokenizer(tokenizer) if tokenizer is not None else from_hf_tokenizer(source)
    if tok.vocab_size != model.config.vocab_size:
        raise UserError(f"the tokenizer has {tok.vocab_size} ids but the model {model.config.vocab_size}; "
                        "pass the model's own tokenizer with --tokenizer")
    if add_chat_tokens:
        tok, model = _with_chat_tokens(tok, model)
    c = model.config
    overrides = {k: v for k, v in dataclasses.asdict(c).items() if k not in ("vocab_size", "block_size")}
    config = {"arch": "gpt", "preset": "gpt2" if hf_arch(c) == "gpt2" else "modern", "depth": c.n_layer,
              "block_size": c.block_size, "model": overrides}
    state = RunState(config=config, model_config=model_config(model), tokenizer=tok.identity(),
                     num_params=model.num_params())
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            tok_file = tok.save(Path(tmp))
            return save_checkpoint(out, model, [], state, tokenizer_json=tok_file, is_best=True)
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None


def _with_chat_tokens(tok: Tokenizer, model: torch.nn.Module):
    """(tokenizer, model) with the special tokens of SPECIAL_TOKENS that ``tok`` lacks appended (new ids
    from vocab_size on) and new embedding / output rows for them, each the mean of the old rows."""
    missing = [s for s in SPECIAL_TOKENS if s not in tok.special_tokens]
    if not missing:
        return tok, model
    if tok.kind != "bpe":
        raise UserError(f"cannot add chat tokens to a {tok.kind} tokenizer")
    d = tok.to_dict()
    d["special_tokens"] = {**tok.special_tokens, **{s: tok.vocab_size + k for k, s in enumerate(missing)}}
    tok = BPETokenizer.from_dict(d)
    grown = GPT(dataclasses.replace(model.config, vocab_size=tok.vocab_size))
    sd = model.state_dict()
    for k in ("transformer.wte.weight", "lm_head.weight"):
        w = sd[k]
        sd[k] = torch.cat([w, w.mean(0, keepdim=True).expand(tok.vocab_size - w.size(0), -1)])
    grown.load_state_dict(sd)
    print(f"added {len(missing)} chat tokens to the tokenizer (ids {d['special_tokens'][missing[0]]}.."
          f"{tok.vocab_size - 1}) and mean-initialised rows for them to the model")
    return tok, grown.eval()
