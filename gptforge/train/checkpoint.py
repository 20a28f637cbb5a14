"""Checkpoints: one directory each, written whole or not at all.

Layout of a run directory::

    RUN_DIR/config.json            the resolved config of the first session
    RUN_DIR/metrics.jsonl          one JSON record per step (see trainer.py)
    RUN_DIR/ckpt/step_000500/      a checkpoint:
        model.safetensors          weights (float32 as trained), metadata {"format", "step"}
        optimizer.pt               optimizer state: a dict of tensors, numbers, lists (torch.save),
                                   read back with torch.load(weights_only=True): no pickled code
        trainer.json               step, tokens, elapsed seconds, RNG states (per rank), data
                                   position, val/best losses, config, model config, tokenizer identity
        tokenizer.json             the tokenizer, so the checkpoint alone can sample
    RUN_DIR/ckpt/latest            text file naming the newest checkpoint directory
    RUN_DIR/ckpt/best              text file naming the checkpoint with the lowest val loss

Saving writes every file into ``ckpt/.tmp-step_N``, fsyncs, renames the directory into place, and
only then rewrites the ``latest``/``best`` pointer files (also by rename). A crash or kill at any
moment leaves the pointers naming a complete checkpoint. Old step checkpoints beyond the last
``keep_last`` are deleted, except the best.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from gptforge import __version__
from gptforge.errors import UserError

FORMAT = "gptforge.checkpoint"
FORMAT_VERSION = 1
STEP_DIR = re.compile(r"^step_(\d+)$")


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


def set_rng_state(d: dict, device: torch.device) -> None:
    """Restore what ``rng_state`` returned."""
    py, n = d["python"], d["numpy"]
    random.setstate((py["version"], tuple(int(v) for v in _unb64(py["state"], np.uint32)), py["gauss"]))
    np.random.set_state((n["kind"], _unb64(n["keys"], np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(torch.from_numpy(_unb64(d["torch"], np.uint8)))
    if device.type == "cuda" and "cuda" in d:
        torch.cuda.set_rng_state(torch.from_numpy(_unb64(d["cuda"], np.uint8)), device)


# --- writing --------------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    finally:
        os.close(fd)


def _write_pointer(ckpt_root: Path, name: str, target: str) -> None:
    tmp = ckpt_root / f".{name}.tmp"
    tmp.write_text(target + "\n")
    _fsync(tmp)
    os.replace(tmp, ckpt_root / name)


def read_pointer(ckpt_root: Path, name: str) -> str | None:
    """The checkpoint directory name in ``ckpt/latest`` or ``ckpt/best``, or None."""
    try:
        return (ckpt_root / name).read_text().strip() or None
    except FileNotFoundError:
        return None


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module,
                    optimizers: list[torch.optim.Optimizer], trainer_state: dict,
                    tokenizer_json: str | os.PathLike | None = None, is_best: bool = False,
                    keep_last: int = 2) -> Path:
    """Write ``RUN_DIR/ckpt/step_{step:06d}`` atomically, update the pointers, prune old ones.

    ``trainer_state`` is written as ``trainer.json`` (with format keys added). Returns the
    checkpoint directory.
    """
    root = Path(run_dir) / "ckpt"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": FORMAT, "step": str(step)})
    torch.save({"optimizers": [o.state_dict() for o in optimizers]}, tmp / "optimizer.pt")
    state = {"format": FORMAT, "version": FORMAT_VERSION, "created_by": f"gptforge {__version__}",
             **trainer_state}
    (tmp / "trainer.json").write_text(json.dumps(state, indent=1) + "\n")
    if tokenizer_json is not None:
        shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    final = root / name
    if final.exists():  # an orphan from a crashed session (never the one `latest` names)
        old = root / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    _fsync(root)
    _write_pointer(root, "latest", name)
    if is_best:
        _write_pointer(root, "best", name)
    _prune(root, keep_last)
    return final


def _prune(root: Path, keep_last: int) -> None:
    keep = {read_pointer(root, "latest"), read_pointer(root, "best")}
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)))
    for i, (_, p) in enumerate(steps):
        if p.name not in keep and i < len(steps) - keep_last:
            shutil.rmtree(p, ignore_errors=True)


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


def read_trainer_state(ckpt: Path) -> dict:
    """Parse and check ``trainer.json`` of checkpoint directory ``ckpt``.

    Raises:
        UserError: missing, corrupt, not a gptforge checkpoint, or an unsupported version.
    """
    f = ckpt / "trainer.json"
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{f}: missing; {ckpt} is not a complete checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{f}: corrupt checkpoint metadata ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{f}: not a gptforge checkpoint")
    if state.get("version") != FORMAT_VERSION:
        raise UserError(f"{f}: checkpoint format version {state.get('version')!r} is not supported")
    for key in ("step", "tokens", "config", "model_config", "tokenizer"):
        if key not in state:
            raise UserError(f"{f}: corrupt checkpoint metadata (no {key!r})")
    return state


def load_weights(model: torch.nn.Module, ckpt: Path, device: str | torch.device = "cpu") -> None:
    """Load ``ckpt/model.safetensors`` into ``model`` (strict: every tensor, every shape).

    Raises:
        UserError: missing or corrupt file, or weights that do not fit this model.
    """
    f = ckpt / "model.safetensors"
    if not f.exists():
        raise UserError(f"{f}: missing; {ckpt} is not a complete checkpoint")
    try:
        load_model(model, str(f), strict=True, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{f}: corrupt weights file ({e})") from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{f}: weights do not fit the model in trainer.json ({first[-1].strip()})") from None


def load_optimizer_state(optimizers: list[torch.optim.Optimizer], ckpt: Path,
                         device: str | torch.device = "cpu") -> None:
    """Load ``ckpt/optimizer.pt`` (``torch.load(weights_only=True)``) into ``optimizers``.

    Raises:
        UserError: missing, corrupt, or made for other optimizers/parameters.
    """
    f = ckpt / "optimizer.pt"
    try:
        d = torch.load(f, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{f}: missing; {ckpt} is not a complete checkpoint") from None
    except Exception as e:  # torch raises several types for truncated/foreign files
        raise UserError(f"{f}: corrupt optimizer state ({type(e).__name__}: {e})") from None
    states = d.get("optimizers") if isinstance(d, dict) else None
    if not isinstance(states, list) or len(states) != len(optimizers):
        raise UserError(f"{f}: optimizer state does not match this run's optimizers")
    try:
        for opt, sd in zip(optimizers, states, strict=True):
            opt.load_state_dict(sd)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{f}: optimizer state does not match this run's optimizers ({e})") from None


def load_checkpoint(path: str | os.PathLike, which: str = "latest", device: str | torch.device = "cpu"
                    ) -> tuple[torch.nn.Module, dict]:
    """Load a model for sampling/evaluation: ``(model in eval mode on device, trainer_state)``.

    ``path`` is a run directory (``which`` picks ``latest`` or ``best``) or a checkpoint
    directory. ``trainer_state`` is the parsed ``trainer.json`` plus ``"path"`` (the checkpoint
    directory, str); ``Path(state["path"]) / "tokenizer.json"`` is the tokenizer.

    Raises:
        UserError: missing, incomplete, corrupt or incompatible checkpoint (the message names it).
    """
    from gptforge.models import model_from_config

    ck = find_checkpoint(path, which)
    state = read_trainer_state(ck)
    try:
        model = model_from_config(state["model_config"])
    except (KeyError, TypeError, ValueError, UserError) as e:
        raise UserError(f"{ck / 'trainer.json'}: cannot build the model it describes ({e})") from None
    load_weights(model, ck, device)
    model.to(device).eval()
    state["path"] = str(ck)
    return model, state
