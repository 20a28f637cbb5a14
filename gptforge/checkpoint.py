"""Checkpoints: one directory each, written whole or not at all.

Layout of a run directory::

    RUN_DIR/config.json            the resolved config of the first session
    RUN_DIR/metrics.jsonl          one JSON record per step (see gptforge/train/loop.py)
    RUN_DIR/ckpt/step_000500/      a checkpoint:
        model.safetensors          weights (float32 as trained), metadata {"format", "step"}
        optimizer.pt               optimizer state: a dict of tensors, numbers, lists (torch.save),
                                   read back with torch.load(weights_only=True): no pickled code
        trainer.json               the run's state (``RunState``): step, tokens, seconds, RNG states
                                   (per rank), val/best losses, config, model config, tokenizer
                                   identity, sha256 of model.safetensors
        tokenizer.json             the tokenizer, so the checkpoint alone can sample
        sampler.safetensors        only with curriculum sampling: the sampler's loss table (numpy
                                   arrays; safetensors, so no pickled code)
        adapter_config.json        only for a LoRA run: the adapter in PEFT's own files, beside the
        adapter_model.safetensors  frozen weights in model.safetensors (gptforge.models.lora)
    RUN_DIR/ckpt/latest            text file naming the newest checkpoint directory
    RUN_DIR/ckpt/best              text file naming the checkpoint with the lowest val loss

Saving writes every file into ``ckpt/.tmp-step_N``, fsyncs, renames the directory into place, and
only then rewrites the ``latest``/``best`` pointer files (also by rename). A crash or kill at any
moment leaves the pointers naming a complete checkpoint. Old step checkpoints beyond the last
``keep_last`` are deleted, except the best.

Loading: the trainer (resume) and the engine (sampling, serving, evaluation) both read checkpoints
through ``load_checkpoint``; this module sits below both, so the engine never imports training.
A LoRA checkpoint loads with its adapter merged into the weights (resuming keeps them apart).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import ConfigDict, Field, TypeAdapter
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_model, save_model

from gptforge import __version__
from gptforge.errors import UserError
from gptforge.io import atomic_write, fsync, read_file, read_json, validate, write_json
from gptforge.models import model_from_config
from gptforge.models.lora import ADAPTER_CONFIG, has_lora, load_lora, save_lora

FORMAT = "gptforge.checkpoint"
FORMAT_VERSION = 1
STEP_DIR = re.compile(r"^step_(\d+)$")
SAMPLER_FILE = "sampler.safetensors"
# trainer.json's types (``read_trainer_state``): exact JSON types (no bool for an int, no "1" for a
# number), counts and seconds >= 0, losses of any sign (DPO's may be negative)
Count = Annotated[int, Field(ge=0, strict=True)]
Seconds = Annotated[float, Field(ge=0, strict=True)]
Loss = Annotated[float, Field(strict=True)]


@dataclass
class RunState:
    """Where a training run stands. The loop updates it; saved, it *is* ``trainer.json``.

    Units: ``step`` optimizer steps done; ``tokens`` training tokens seen (all processes);
    ``time_s`` wall seconds since the run began (across resumed sessions); ``train_time_s`` the
    part of it inside optimizer steps; ``schedule_steps`` the step count a ``schedule_time`` run last
    planned (None: the config's budget); losses in nats per token, ``val_bpb`` in bits per UTF-8 byte.
    ``val_step`` is the step ``val_loss`` was measured at; ``best_val_loss`` the lowest val loss of
    a saved checkpoint (the one ``ckpt/best`` names). ``rng`` holds every process's RNG streams
    (``rng_state``), ``config`` the TrainConfig as a dict, ``model_config`` what
    ``models.model_from_config`` rebuilds, ``tokenizer`` the shards' tokenizer identity
    (kind, vocab_size, sha256). ``path`` is where it was read from (not saved).
    """

    step: Count = 0
    tokens: Count = 0
    time_s: Seconds = 0.0
    train_time_s: Seconds = 0.0
    schedule_steps: Count | None = None
    tokens_per_step: Count | None = None
    world_size: Count = 1
    val_loss: Loss | None = None
    val_bpb: Loss | None = None
    val_step: Count | None = None
    best_val_loss: Loss | None = None
    num_params: Count = 0
    config: dict = field(default_factory=dict)
    model_config: dict = field(default_factory=dict)
    tokenizer: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    rng: list = field(default_factory=list)
    weights_sha256: str | None = None
    path: str | None = None

    __pydantic_config__ = ConfigDict(allow_inf_nan=False)  # trainer.json has no NaN

    def to_json(self) -> dict:
        """The trainer.json object (without ``path``; ``io.write_json`` writes NaN as null)."""
        d = dataclasses.asdict(self)
        d.pop("path")
        return d


# keys a trainer.json must have (the others default)
REQUIRED = ("step", "tokens", "config", "model_config", "tokenizer")


# --- RNG states as JSON ---------------------------------------------------------------------------
def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _unb64(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).copy()


def rng_state(device: torch.device) -> dict:
    """This process's Python, numpy (global) and torch (CPU, and the current CUDA device) RNG
    states, JSON-serialisable (state arrays as base64 of their raw bytes)."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    d = {"python": {"version": py_version, "state": _b64(np.array(py_state, dtype=np.uint32)),
                    "gauss": py_gauss},
         "numpy": {"kind": np_kind, "keys": _b64(np_keys.astype(np.uint32)), "pos": int(np_pos),
                   "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
         "torch": _b64(torch.get_rng_state().numpy())}
    if device.type == "cuda":
        d["cuda"] = _b64(torch.cuda.get_rng_state(device).numpy())
    return d


def set_rng_state(d: dict, device: torch.device, where: str | os.PathLike = "trainer.json") -> None:
    """Restore what ``rng_state`` returned.

    Raises:
        UserError: ``d`` is not a valid saved state (naming ``where``).
    """
    try:
        py, n = d["python"], d["numpy"]
        random.setstate((py["version"], tuple(int(v) for v in _unb64(py["state"], np.uint32)), py["gauss"]))
        np.random.set_state((n["kind"], _unb64(n["keys"], np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        torch.set_rng_state(torch.from_numpy(_unb64(d["torch"], np.uint8)))
        if device.type == "cuda" and "cuda" in d:
            torch.cuda.set_rng_state(torch.from_numpy(_unb64(d["cuda"], np.uint8)), device)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, OverflowError) as e:
        raise UserError(f"{where}: corrupt RNG state ({type(e).__name__})") from None


# --- writing --------------------------------------------------------------------------------------
def read_pointer(ckpt_root: Path, name: str) -> str | None:
    """The checkpoint directory name in ``ckpt/latest`` or ``ckpt/best``, or None if there is none.

    Raises:
        UserError: the pointer is a directory, unreadable, or does not hold a ``step_N`` name.
    """
    f = ckpt_root / name
    if not os.path.lexists(f):
        return None
    raw = read_file(f, "pointer file naming a checkpoint", max_bytes=4096)
    text = raw[:64].decode("ascii", errors="replace").strip()
    if len(raw) > 64 or not STEP_DIR.match(text):
        raise UserError(f"{f}: corrupt pointer file (expected a name like step_000100)")
    return text


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in blocks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(run_dir: str | os.PathLike, model: torch.nn.Module,
                    optimizers: list[torch.optim.Optimizer | dict], state: RunState,
                    tokenizer_json: str | os.PathLike | None = None, is_best: bool = False,
                    keep_last: int = 2, sampler: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``RUN_DIR/ckpt/step_{state.step:06d}`` atomically, update the pointers, prune old ones.

    ``optimizers``: the optimizers, or their state dicts (a sharded run passes the full ones it
    gathered); ``state`` is written as ``trainer.json`` (format keys and the weights' sha256 added);
    ``sampler``, named numpy arrays, as ``sampler.safetensors``. Returns the checkpoint directory.
    """
    step = state.step
    root = Path(run_dir) / "ckpt"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta = {"format": FORMAT, "step": str(step)}
    if has_lora(model):  # the frozen weights as model.safetensors, the adapter beside them
        save_lora(model, tmp, meta)
    else:
        save_model(model, str(tmp / "model.safetensors"), metadata=meta)
    torch.save({"optimizers": [o if isinstance(o, dict) else o.state_dict() for o in optimizers]},
               tmp / "optimizer.pt")
    state.weights_sha256 = file_sha256(tmp / "model.safetensors")
    write_json(tmp / "trainer.json", {"created_by": f"gptforge {__version__}", **state.to_json()},
               FORMAT, FORMAT_VERSION)
    if tokenizer_json is not None:
        shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
    if sampler is not None:
        save_numpy(sampler, str(tmp / SAMPLER_FILE))
    for f in tmp.iterdir():
        fsync(f)
    fsync(tmp)
    final = root / name
    if final.exists():  # an orphan from a crashed session (never the one `latest` names): moved aside
        old = root / f".old-{name}"  # first, so a crash mid-delete leaves no half step dir for icl/prune
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    fsync(root)
    for pointer in ("latest", "best") if is_best else ("latest",):
        atomic_write(root / pointer, name + "\n")
    _prune(root, keep_last)
    return final


def _prune(root: Path, keep_last: int) -> None:
    keep = {read_pointer(root, "latest"), read_pointer(root, "best")}
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)))
    for i, (_, p) in enumerate(steps):
        if p.name not in keep and i < len(steps) - keep_last:
            shutil.rmtree(p, ignore_errors=True)


_TRAINER_JSON = TypeAdapter(RunState)


# --- reading --------------------------------------------------------------------------------------
def find_checkpoint(path: str | os.PathLike, which: str = "latest") -> Path:
    """Resolve a run directory (its ``ckpt/latest`` or ``ckpt/best``) or a checkpoint directory.

    Raises:
        UserError: no such directory, or a run directory without checkpoints.
    """
    p = Path(path)
    if (p / "trainer.json").exists():
        return p
    if not p.is_dir():
        raise UserError(f"{path}: no such run or checkpoint directory")
    root = p / "ckpt"
    name = read_pointer(root, which)
    if name is None:
        if which == "best" and read_pointer(root, "latest"):
            raise UserError(f"{path}: no best checkpoint yet (no evaluation has been saved); use the latest")
        raise UserError(f"{path}: no checkpoint here (expected {root}/latest or a directory "
                        "holding trainer.json)")
    ck = root / name
    if not (ck / "trainer.json").exists():
        raise UserError(f"{ck}: checkpoint named by {root / which} is missing or incomplete")
    return ck


def read_trainer_state(ckpt: Path) -> RunState:
    """Parse and check ``trainer.json`` of checkpoint directory ``ckpt``.

    Raises:
        UserError: missing, corrupt, not a gptforge checkpoint, or an unsupported version.
    """
    f = ckpt / "trainer.json"
    d = read_json(f, FORMAT, (FORMAT_VERSION,), what="checkpoint metadata")
    if missing := [k for k in REQUIRED if k not in d]:
        raise UserError(f"{f}: corrupt checkpoint metadata (no {missing[0]!r})")
    return validate(_TRAINER_JSON, {**d, "path": str(ckpt)}, f, "checkpoint metadata")


def read_sampler_state(ckpt: Path) -> dict[str, np.ndarray] | None:
    """The arrays of ``ckpt/sampler.safetensors`` (a curriculum sampler's table), or None if the
    checkpoint has none.

    Raises:
        UserError: the file exists but cannot be read.
    """
    f = Path(ckpt) / SAMPLER_FILE
    if not f.exists():
        return None
    try:
        return load_numpy(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{f}: corrupt sampler state ({e})") from None


def load_weights(model: torch.nn.Module, ckpt: Path, device: str | torch.device = "cpu",
                 sha256: str | None = None) -> None:
    """Load ``ckpt/model.safetensors`` into ``model`` (strict: every tensor, every shape); with
    ``sha256``, first check the file's bytes hash to it.

    Raises:
        UserError: missing or corrupt file, a checksum mismatch, or weights that do not fit this model.
    """
    f = ckpt / "model.safetensors"
    if not f.is_file():
        raise UserError(f"{f}: missing; {ckpt} is not a complete checkpoint")
    if sha256 is not None and file_sha256(f) != sha256:
        raise UserError(f"{f}: corrupt weights file (sha256 differs from trainer.json's; pass "
                        "verify=False / --no-verify to load it anyway)")
    try:
        load_model(model, str(f), strict=True, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{f}: corrupt weights file ({e})") from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{f}: weights do not fit the model in trainer.json ({first[-1].strip()})") from None


def load_optimizer_state(optimizers: list[torch.optim.Optimizer], ckpt: Path,
                         device: str | torch.device = "cpu") -> None:
    """Load ``ckpt/optimizer.pt`` (``torch.load(weights_only=True)``) into ``optimizers``. The file
    holds full tensors; for a sharded (FSDP2) model each rank keeps its shard of them, laid out as
    the parameter's (pass ``device="cpu"`` there, so the full state never lands on the GPU).

    Raises:
        UserError: missing, corrupt, or made for other optimizers/parameters.
    """
    f = ckpt / "optimizer.pt"
    try:
        d = torch.load(f, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{f}: missing; {ckpt} is not a complete checkpoint") from None
    except Exception as e:  # torch raises several types for truncated/foreign files (pickled code too)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{f}: corrupt or unsafe optimizer state ({type(e).__name__}: {first[:120]})"
                        ) from None
    states = d.get("optimizers") if isinstance(d, dict) else None
    if not isinstance(states, list) or len(states) != len(optimizers):
        raise UserError(f"{f}: optimizer state does not match this run's optimizers")
    try:
        for opt, sd in zip(optimizers, states, strict=True):
            opt.load_state_dict(_shard_like_params(opt, sd))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:  # whatever the structure
        raise UserError(f"{f}: optimizer state does not match this run's optimizers ({e})") from None


def _shard_like_params(opt: torch.optim.Optimizer, sd: dict) -> dict:
    """``sd`` (a full optimizer state dict) with each state tensor of a DTensor parameter's shape
    cut to that parameter's shard (its mesh and placements; every rank holds the full tensor, so
    no data moves between ranks). ``sd`` unchanged when no parameter is a DTensor."""
    params = [p for g in opt.param_groups for p in g["params"]]
    if not any(type(p).__name__ == "DTensor" for p in params):  # plain models import no torch.distributed
        return sd
    from torch.distributed.tensor import DTensor, distribute_tensor

    ids = [i for g in sd["param_groups"] for i in g["params"]]
    state = dict(sd["state"])
    for i, p in zip(ids, params, strict=True):
        if isinstance(p, DTensor) and i in state:
            state[i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                        if isinstance(v, torch.Tensor) and v.shape == p.shape else v
                        for k, v in state[i].items()}
    return {**sd, "state": state}


def load_checkpoint(path: str | os.PathLike, which: str = "latest", device: str | torch.device = "cpu",
                    verify: bool = True, merge_lora: bool = True) -> tuple[torch.nn.Module, RunState]:
    """Load a model for sampling/evaluation: ``(model in eval mode on device, RunState)``.

    ``path`` is a run directory (``which`` picks ``latest`` or ``best``) or a checkpoint
    directory. ``state.path`` is the checkpoint directory; its ``tokenizer.json`` is the tokenizer.
    ``verify`` checks the weights file against the sha256 in trainer.json (when it has one).
    A LoRA checkpoint's adapter is merged into the weights (``merge_lora``; False: kept apart and
    trainable, to resume its run).

    Raises:
        UserError: missing, incomplete, corrupt or incompatible checkpoint (the message names it).
    """
    ck = find_checkpoint(path, which)
    state = read_trainer_state(ck)
    try:
        with torch.device("meta"):  # sizes first: a hostile trainer.json must not allocate terabytes
            n = sum(p.numel() * p.element_size() for p in model_from_config(state.model_config).parameters())
        weights = ck / "model.safetensors"
        if weights.is_file() and n > weights.stat().st_size:
            raise UserError(f"trainer.json describes a model of {n:,} bytes of weights, but {weights} "
                            f"holds {weights.stat().st_size:,}")
        model = model_from_config(state.model_config)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{ck / 'trainer.json'}: cannot build the model it describes ({e})") from None
    load_weights(model, ck, device, state.weights_sha256 if verify else None)
    if (ck / ADAPTER_CONFIG).is_file():
        model = load_lora(model, ck, merge_lora)
    model.to(device).eval()
    return model, state
