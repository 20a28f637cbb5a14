"""Move `GPT` weights to and from Hugging Face transformers.

Two architectures fit:

- ``GPT2LMHeadModel`` (model_type "gpt2") <-> the ``gpt2`` preset: learned positions, LayerNorm with
  bias, tanh-GELU, biases everywhere, no QK-norm, no embedding norm, no softcap, n_kv_head == n_head.
  Any depth/width/n_inner/epsilon; tied or untied lm_head. Our parameter names are GPT-2's; only the
  four Conv1D matrices (c_attn, c_proj, c_fc, mlp.c_proj) are stored transposed there.
- ``NanoChatForCausalLM`` (model_type "nanochat", transformers >= 5) <-> the ``modern`` preset:
  RoPE (half-split, theta = rope_theta), parameter-free RMSNorm after the embedding and before every
  sublayer, QK-norm after RoPE, ReLU^2 MLP, no biases, optional logit softcap, GQA, tied or untied.
  Our fused c_attn is split into q_proj / k_proj / v_proj.

What does not fit (``save_hf`` / ``to_hf`` raise UserError naming the field): SwiGLU or GELU MLPs in
the modern layout, no QK-norm, no embedding norm, LayerNorm or biases with RoPE (NanoChat's norms
have no parameters and its MLP no bias), learned positions with RMSNorm, a softcap or GQA on the
GPT-2 layout. Dropout (training only) maps to GPT-2's resid_pdrop and embd_pdrop; our GPT has no
attention dropout, and HF NanoChat has only attention dropout, so its attention_dropout is 0.
Features of Karpathy's current nanochat repo that neither side has (value embeddings, per-layer
residual scalars, sliding-window attention) are out of scope. Only the weights and the BOS/EOS ids
move here; gptforge.export.export_hf adds the tokenizer and the chat template.

``transformers`` is needed only by `to_hf` (and to load a transformers model object): reading and
writing HF folders (config.json + model.safetensors) uses only safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptforge.errors import UserError
from gptforge.models.gpt import GPT, GPTConfig

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _misfits(config: GPTConfig, want: dict) -> list[str]:
    return [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in want.items() if getattr(config, k) != v]


def gpt2_misfits(config: GPTConfig) -> list[str]:
    """The settings of ``config`` that GPT-2's layout lacks ("field=value (needs x)"); [] if it has none."""
    return _misfits(config, dict(positional="learned", norm="layernorm", bias=True, mlp="gelu", qk_norm=False,
                                 embd_norm=False, logit_softcap=None, n_kv_head=config.n_head))


def hf_arch(config: GPTConfig) -> str:
    """ "gpt2" or "nanochat": the HF model type this config exports to; UserError saying why if none."""
    gpt2 = gpt2_misfits(config)
    if not gpt2:
        return "gpt2"
    nano = _misfits(config, dict(positional="rope", norm="rmsnorm", bias=False, mlp="relu2", qk_norm=True,
                                 embd_norm=True))
    if not nano:
        return "nanochat"
    raise UserError(f"this GPT fits neither HF GPT2LMHeadModel ({', '.join(gpt2)}) "
                    f"nor NanoChatForCausalLM ({', '.join(nano)})")


def hf_config_dict(config: GPTConfig, eos_id: int | None = None) -> dict:
    """The HF config.json contents (a plain dict) for our config; UserError if no HF architecture fits.

    eos_id: the id of ``<|endoftext|>``, written as both BOS and EOS (GPT-2's convention: a document
    starts after one); None leaves them null. n_ctx repeats n_positions for GPT-2 (llama.cpp's
    converter reads it)."""
    c = config
    if hf_arch(c) == "gpt2":
        return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=c.vocab_size,
                    n_positions=c.block_size, n_ctx=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                    n_head=c.n_head,
                    n_inner=c.mlp_hidden, activation_function="gelu_new", resid_pdrop=c.dropout,
                    embd_pdrop=c.dropout, attn_pdrop=0.0, layer_norm_epsilon=c.norm_eps,
                    tie_word_embeddings=c.tie_embeddings, bos_token_id=eos_id, eos_token_id=eos_id)
    return dict(model_type="nanochat", architectures=["NanoChatForCausalLM"], vocab_size=c.vocab_size,
                hidden_size=c.n_embd, intermediate_size=c.mlp_hidden, num_hidden_layers=c.n_layer,
                num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                max_position_embeddings=c.block_size,
                hidden_act="relu2", attention_dropout=0.0, rms_norm_eps=c.norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                final_logit_softcapping=c.logit_softcap, attention_bias=False,
                tie_word_embeddings=c.tie_embeddings, bos_token_id=eos_id, eos_token_id=eos_id,
                pad_token_id=None)


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under HF parameter names and layouts (fresh contiguous float tensors).

    Includes lm_head.weight even when tied (HF's tied models accept it); `save_hf` drops it then."""
    cfg = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if hf_arch(cfg) == "gpt2":
        return {k: (v.t().contiguous() if k.endswith(_CONV1D) else v) for k, v in sd.items()}
    hs = cfg.head_dim
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"], "lm_head.weight": sd["lm_head.weight"]}
    for i in range(cfg.n_layer):
        p, o = f"transformer.h.{i}.", f"model.layers.{i}."
        qkv = sd[p + "attn.c_attn.weight"].split([cfg.n_head * hs, cfg.n_kv_head * hs, cfg.n_kv_head * hs])
        for name, w in zip("qkv", qkv, strict=True):
            out[o + f"self_attn.{name}_proj.weight"] = w.contiguous()
        out[o + "self_attn.o_proj.weight"] = sd[p + "attn.c_proj.weight"]
        out[o + "mlp.fc1.weight"] = sd[p + "mlp.c_fc.weight"]
        out[o + "mlp.fc2.weight"] = sd[p + "mlp.c_proj.weight"]
    return out


def save_hf(model: GPT, out_dir: str | Path, eos_id: int | None = None) -> Path:
    """Write an HF model folder (config.json + model.safetensors) that
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads as GPT2LMHeadModel or NanoChatForCausalLM.
    Needs only safetensors. eos_id: see `hf_config_dict`. Returns the folder."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    cfg = hf_config_dict(model.config, eos_id)
    sd = {k: v.float().cpu().contiguous() for k, v in hf_state_dict(model).items()}
    if model.config.tie_embeddings:
        del sd["lm_head.weight"]
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror})") from None
    return out


def to_hf(model: GPT):
    """A transformers GPT2LMHeadModel or NanoChatForCausalLM (eval mode, float32) holding our weights."""
    import transformers

    d = hf_config_dict(model.config)
    d.pop("architectures")
    if d.pop("model_type") == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**d))
    else:
        hf = transformers.NanoChatForCausalLM(transformers.NanoChatConfig(**d))
    hf.load_state_dict(hf_state_dict(model), strict=True)
    return hf.eval()


def _read_folder(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path}: no config.json (expected a Hugging Face model folder)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_file}: not valid JSON ({e})") from None
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif (path / "model.safetensors.index.json").is_file():
        index = json.loads((path / "model.safetensors.index.json").read_text())
        files = [path / f for f in sorted(set(index["weight_map"].values()))]
    else:
        raise UserError(f"{path}: no model.safetensors (only safetensors weights are read)")
    sd = {}
    for f in files:
        sd.update(load_file(str(f)))
    return cfg, sd


def _gpt2_config(hf: dict) -> GPTConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"GPT-2 activation_function {act!r} not supported (the gpt2 preset uses tanh-GELU)")
    for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False)):
        if hf.get(key, ok) != ok:
            raise UserError(f"GPT-2 config {key}={hf[key]!r} is not supported")
    tie = hf.get("tie_word_embeddings", True)
    n_embd = hf.get("n_embd", 768)
    return GPTConfig(vocab_size=hf.get("vocab_size", 50257), block_size=hf.get("n_positions", 1024),
                     n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=n_embd,
                     mlp_hidden=hf.get("n_inner") or 4 * n_embd, positional="learned", norm="layernorm",
                     norm_eps=hf.get("layer_norm_epsilon", 1e-5), embd_norm=False, mlp="gelu", qk_norm=False,
                     tie_embeddings=tie, bias=True, dropout=0.0, logit_softcap=None, init="gpt2")


def _nanochat_config(hf: dict) -> GPTConfig:
    if hf.get("hidden_act", "relu2") != "relu2":
        raise UserError(f"NanoChat hidden_act {hf['hidden_act']!r} not supported "
                        "(the modern preset uses relu2)")
    if hf.get("attention_bias", False):
        raise UserError("NanoChat attention_bias=True is not supported (the modern preset has no biases)")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"NanoChat rope_type {rope['rope_type']!r} not supported (only default RoPE)")
    hidden, heads = hf.get("hidden_size", 768), hf.get("num_attention_heads", 6)
    if hf.get("head_dim") not in (None, hidden // heads):
        raise UserError(f"NanoChat head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    return GPTConfig(vocab_size=hf.get("vocab_size", 50304),
                     block_size=hf.get("max_position_embeddings", 2048),
                     n_layer=hf.get("num_hidden_layers", 12), n_head=heads,
                     n_kv_head=hf.get("num_key_value_heads") or heads, n_embd=hidden,
                     mlp_hidden=hf.get("intermediate_size", 8192), positional="rope",
                     rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), norm="rmsnorm",
                     norm_eps=hf.get("rms_norm_eps", 1e-6), embd_norm=True, mlp="relu2", qk_norm=True,
                     tie_embeddings=hf.get("tie_word_embeddings", False), bias=False, dropout=0.0,
                     logit_softcap=hf.get("final_logit_softcapping", 15.0), init="nanochat")


def _infer_gpt2(sd: dict, n_head: int | None) -> dict:
    if n_head is None:
        raise UserError("a bare GPT-2 state dict does not say how many heads it has: pass n_head")
    vocab, n_embd = sd["wte.weight"].shape
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("h."))
    return dict(model_type="gpt2", vocab_size=vocab, n_positions=sd["wpe.weight"].shape[0], n_embd=n_embd,
                n_layer=n_layer, n_head=n_head, n_inner=sd["h.0.mlp.c_fc.weight"].shape[1],
                tie_word_embeddings="lm_head.weight" not in sd
                or torch.equal(sd["lm_head.weight"], sd["wte.weight"]))


def from_hf(source, config: dict | None = None, n_head: int | None = None) -> GPT:
    """A `GPT` holding the weights of a Hugging Face GPT-2 or NanoChat model (eval mode, float32).

    source: an HF model folder (config.json + model.safetensors, or a sharded safetensors index), a
      transformers GPT2LMHeadModel / NanoChatForCausalLM object, or a state dict. A state dict comes
      with ``config`` (the HF config as a dict) or, for GPT-2 only, with ``n_head`` (the only size a
      GPT-2 state dict does not reveal). Keys may carry the "transformer." prefix or not (OpenAI's
      released gpt2 files do not); GPT-2's old attn.bias / attn.masked_bias mask buffers are ignored.
    """
    if isinstance(source, str | Path):
        config, sd = _read_folder(Path(source))
    elif isinstance(source, torch.nn.Module):
        config, sd = source.config.to_dict(), source.state_dict()
    elif isinstance(source, dict):
        sd = source
    else:
        raise UserError(f"cannot import a GPT from {type(source).__name__}")
    sd = {k: v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    kind = (config or {}).get("model_type", "gpt2")
    if kind == "gpt2":
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        cfg = _gpt2_config(config if config is not None else _infer_gpt2(sd, n_head))
        ours = {("lm_head.weight" if k == "lm_head.weight" else "transformer." + k):
                (v.t() if k.endswith(_CONV1D) else v) for k, v in sd.items()}
        if cfg.tie_embeddings or "lm_head.weight" not in ours:
            ours["lm_head.weight"] = ours["transformer.wte.weight"]
    elif kind == "nanochat":
        cfg = _nanochat_config(config)
        wte = sd["model.embed_tokens.weight"]
        ours = {"transformer.wte.weight": wte,
                "lm_head.weight": wte if cfg.tie_embeddings else sd.get("lm_head.weight", wte)}
        for i in range(cfg.n_layer):
            o, p = f"model.layers.{i}.", f"transformer.h.{i}."
            ours[p + "attn.c_attn.weight"] = torch.cat([sd[o + f"self_attn.{n}_proj.weight"] for n in "qkv"])
            ours[p + "attn.c_proj.weight"] = sd[o + "self_attn.o_proj.weight"]
            ours[p + "mlp.c_fc.weight"] = sd[o + "mlp.fc1.weight"]
            ours[p + "mlp.c_proj.weight"] = sd[o + "mlp.fc2.weight"]
    else:
        raise UserError(f"HF model_type {kind!r} not supported (gpt2 and nanochat are)")
    model = GPT(cfg)
    try:
        missing, unexpected = model.load_state_dict(ours, strict=False)
    except RuntimeError as e:  # shape mismatches
        msg = str(e).splitlines()[-1].strip()
        raise UserError(f"HF {kind} weights do not match their config: {msg}") from None
    if missing or unexpected:
        raise UserError(f"HF {kind} weights do not match the config: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")
    return model.eval()
