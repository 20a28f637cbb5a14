"""LoRA: low-rank adapters on a model's Linear layers (Hu et al. 2021), through PEFT (huggingface/peft).

    y = W x + (alpha / r) B A x      W (out, in) frozen; A (r, in) and B (out, r) trained, B = 0 at first

``add_lora`` injects the adapters (PEFT's ``inject_adapter_in_model``: each targeted ``nn.Linear``
becomes a ``peft.tuners.lora.Linear`` that holds it as ``base_layer``) and freezes every other
parameter, so only A and B get gradients and optimizer state. A checkpoint of such a model
(``save_lora``) holds the frozen weights under their plain names in ``model.safetensors``, as any
checkpoint does, and the adapter beside them in PEFT's own two files, ``adapter_config.json`` and
``adapter_model.safetensors``: ``peft.PeftModel.from_pretrained(gpt, ckpt_dir)`` loads it like any
PEFT adapter, and ``load_lora`` does exactly that, then merges (W + (alpha / r) B A, PEFT's
``merge_and_unload``) for inference or keeps the adapter apart to resume training.

peft imports transformers (several seconds): it is imported here only where a model has or gets
adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gptforge.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"  # PEFT's file names, so that the checkpoint is a PEFT adapter folder
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # the key prefix PeftModel.save_pretrained writes, from_pretrained reads
# every Linear layer of a GPT block: attention's fused q|k|v and output projection, the MLP's two (c_proj
# names both output projections); lm_head is left out (V x r more weights, and tied to wte in GPT-2).
# Adapters on all of a block's Linear layers are what matches full finetuning (Dettmers et al. 2023, QLoRA)
DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")


@dataclass(frozen=True)
class LoraSpec:
    """What ``--lora`` asks for: rank ``r``, scale numerator ``alpha`` (the update is alpha / r B A)
    and ``targets``, Linear layer names (a module matches when its dotted name is the target or ends
    in ``.target``, PEFT's rule: ``c_proj`` names both projections, ``attn.c_proj`` the attention's)."""

    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __str__(self) -> str:
        return f"r={self.r},alpha={self.alpha:g},targets={','.join(self.targets)}"


def parse_lora(text: str) -> LoraSpec:
    """``r=8,alpha=16[,targets=c_attn,c_proj]`` -> LoraSpec (each key optional: r 8, alpha 16, the
    DEFAULT_TARGETS); the names after ``targets=`` run to the end, comma-separated. ``str()`` of the
    result parses back to it.

    Raises:
        UserError: an unknown key, a rank outside [1, 4096], alpha not > 0, no target name.
    """
    where = f"--lora {text}"
    vals: dict = {}
    key = None
    for part in (p.strip() for p in text.split(",")):
        name, eq, value = (s.strip() for s in part.partition("="))
        if eq:
            if name not in ("r", "alpha", "targets") or name in vals:
                raise UserError(f"{where}: {'repeated' if name in vals else 'unknown'} key {name!r} "
                                "(expected r=RANK,alpha=A[,targets=NAME,...])")
            key, vals[name], part = name, [] if name == "targets" else value, value
        elif key != "targets":  # only the target list goes on past a comma
            raise UserError(f"{where}: expected r=RANK,alpha=A[,targets=NAME,...], not {part!r}")
        if key == "targets" and part:
            vals["targets"].append(part)
    try:
        r, alpha = int(vals.get("r", 8)), float(vals.get("alpha", 16.0))
    except ValueError:
        raise UserError(f"{where}: r is an integer and alpha a number") from None
    if not 1 <= r <= 4096 or not 0 < alpha < float("inf"):
        raise UserError(f"{where}: r must be in [1, 4096] and alpha > 0")
    if "targets" in vals and not vals["targets"]:
        raise UserError(f"{where}: targets= names no layer (e.g. targets=c_attn,c_proj)")
    return LoraSpec(r, alpha, tuple(vals.get("targets", DEFAULT_TARGETS)))


def add_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Inject adapters into ``model``'s Linear layers named by ``spec.targets``, in place (the model
    is returned), and freeze every other parameter. A is Kaiming-uniform, B zero (PEFT's and the
    paper's init), so the model computes what it did until the first step; the draw of A follows
    torch's global RNG. No dropout on the adapters.

    Raises:
        UserError: a target that names no Linear layer of the model, or ``lm_head`` when it is tied
            to the embedding (merging would change the embedding too); no peft installed.
    """
    peft = _peft()
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
    for t in spec.targets:
        hits = [n for n in linear if n == t or n.endswith("." + t)]
        if not hits:
            raise UserError(f"--lora targets={t}: no Linear layer of this model is named so (its Linear "
                            f"layers: {', '.join(leaves)})")
        if getattr(getattr(model, "config", None), "tie_embeddings", False) and "lm_head" in hits:
            raise UserError(f"--lora targets={t}: lm_head shares its weights with the token embedding "
                            "here; an adapter on it would change the embedding when merged")
    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, target_modules=list(spec.targets),
                             lora_dropout=0.0)
    return peft.inject_adapter_in_model(config, model)


def _peft():
    """The peft package, imported on first use (it imports transformers: several seconds).

    Raises:
        UserError: it is not installed (an optional dependency, ``gptforge[lora]``).
    """
    try:
        import peft
    except ImportError:
        raise UserError("LoRA needs the peft package: pip install 'gptforge[lora]' (or pip install peft)"
                        ) from None
    return peft


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds LoRA adapters (``add_lora``, or ``load_lora`` without merging)."""
    return any(".lora_A." in name for name, _ in model.named_parameters())


def save_lora(model: nn.Module, d: Path, metadata: dict[str, str]) -> None:
    """Write ``d/model.safetensors``, the frozen weights under the names the model has without
    adapters (a tied matrix once; ``metadata`` in its header), and the adapter as PEFT writes one:
    ``d/adapter_config.json`` and ``d/adapter_model.safetensors`` (float32 A and B of every
    targeted layer)."""
    from safetensors.torch import save_file

    base, seen = {}, set()
    for name, t in model.state_dict().items():
        if ".lora_" in name or t.data_ptr() in seen:  # the adapter; the second name of a tied matrix
            continue
        seen.add(t.data_ptr())
        base[name.replace(".base_layer.", ".")] = t.detach().contiguous()
    save_file(base, str(d / "model.safetensors"), metadata=metadata)
    adapter = _peft().get_peft_model_state_dict(model)  # names without the adapter's name ("default")
    adapter = {PEFT_PREFIX + k: v.detach().contiguous() for k, v in adapter.items()}
    save_file(adapter, str(d / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    model.peft_config["default"].save_pretrained(str(d))


def load_lora(model: nn.Module, d: Path, merge: bool = True) -> nn.Module:
    """Load the adapter in ``d`` (``save_lora``'s files) onto ``model``, which holds the frozen
    weights, with ``peft.PeftModel.from_pretrained``. ``merge``: fold it into the weights (PEFT's
    ``merge_and_unload``) and return the plain model, for inference and for finetuning further;
    else return ``model`` with the adapter injected and trainable (resuming its training).

    Raises:
        UserError: an adapter file that is corrupt or does not fit the model; no peft installed.
    """
    from safetensors import SafetensorError

    PeftModel = _peft().PeftModel
    try:
        peft_model = PeftModel.from_pretrained(model, str(d), is_trainable=not merge)
    except (SafetensorError, OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{d}: corrupt LoRA adapter, or one that does not fit the model ({first[:200]})"
                        ) from None
    if not merge:
        return model
    with torch.no_grad():
        return peft_model.merge_and_unload()
