"""A training process's session: everything the loop needs before its first step (the process's
rank and device, a claimed run directory, the data, the model and optimizers, the run state, fresh
or resumed), and the two things the loop asks of it on the way: ``evaluate()`` and ``save()``.

``setup(cfg, resume, d)`` returns a ``Session``; loop.py reads top to bottom from there.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gptforge import checkpoint as ckpt
from gptforge.checkpoint import RunState
from gptforge.data.shards import open_shards
from gptforge.errors import UserError
from gptforge.models import build_model, model_config
from gptforge.models.cpu import use_cpu_kernels
from gptforge.models.lora import add_lora, parse_lora
from gptforge.models.zoo import with_block_size
from gptforge.train.batches import PackedBatches, PretrainBatches, eval_offsets, lm_loss
from gptforge.train.config import TrainConfig, saved_config
from gptforge.train.curriculum import CurriculumBatches
from gptforge.train.evaluate import evaluate, window_batches
from gptforge.train.mfu import cpu_native_bf16, peak_flops
from gptforge.train.optim import build_optimizers, replannable, schedule_steps


# --- process ---------------------------------------------------------------------------------------
class Dist:
    """This process's place in the job: rank, world size, device. World size 1 without torchrun."""

    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        kind = device_pref if device_pref != "auto" else (
            "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
        if kind == "cuda" and not torch.cuda.is_available():
            raise UserError("device 'cuda' requested but CUDA is not available")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise UserError("device 'mps' requested but this machine has no Apple GPU (MPS)")
        if kind == "mps" and self.world > 1:
            raise UserError("DDP on 'mps' is not supported; use device cpu")
        self.device = torch.device(f"cuda:{self.local_rank}" if kind == "cuda" else kind)
        if kind == "cuda":
            torch.cuda.set_device(self.device)
        self.ddp = self.world > 1
        if self.ddp and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
        self.main = self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all ranks in place (NCCL needs it on the GPU: copied there and back)."""
        if self.ddp:
            on_device = t.to(self.device)
            dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
            t.copy_(on_device)
        return t

    def broadcast(self, obj):
        if not self.ddp:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if not self.ddp:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self):
        if self.ddp and dist.is_initialized():
            dist.destroy_process_group()


class StopSignal:
    """SIGINT/SIGTERM set ``.received`` (the loop finishes its step and saves); a second signal
    gets the default behaviour (Ctrl-C raises KeyboardInterrupt, SIGTERM terminates)."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        self.__exit__()
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving (again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# --- run directory -------------------------------------------------------------------------------
def claim_run_dir(cfg: TrainConfig, resume: bool, d: Dist):
    """Create (or, resuming, reopen) the run directory and hold an exclusive lock on it for this
    process's lifetime, so that two runs never write into one folder. Rank 0 only; returns the lock
    file (keep it open) or None on other ranks.

    Raises:
        UserError: ``out`` is a file, another live run holds the folder, or (not resuming) it
            already holds a run.
    """
    if not cfg.out:  # a fresh timestamped folder; mkdir without exist_ok makes the name ours alone
        stamp, n = datetime.now().strftime("%Y%m%d-%H%M%S"), 1
        if d.main:
            Path("runs").mkdir(exist_ok=True)
            while True:
                name = Path("runs") / (stamp if n == 1 else f"{stamp}-{n}")
                try:
                    name.mkdir()
                    break
                except FileExistsError:
                    n += 1
            cfg.out = str(name)
        cfg.out = d.broadcast(cfg.out)
    run_dir = Path(cfg.out)
    if not d.main:
        return None
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a directory; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / ".lock", "a")
    except OSError as e:
        raise UserError(f"{run_dir}: cannot create the run directory ({e.strerror})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(f"{run_dir}: another gptforge run is using this directory; choose another --out"
                        ) from None
    # a run killed before its first checkpoint left only a log and a config: nothing to resume, so
    # the folder is free again (a fresh start rewrites both)
    if not resume and ckpt.read_pointer(run_dir / "ckpt", "latest"):
        lock.close()
        raise UserError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                        "or choose another --out")
    return lock


# --- the data ------------------------------------------------------------------------------------
@dataclass
class TrainData:
    """What a run trains and evaluates on, whatever the task.

    batches: ``get(index, device) -> batch``, index the run-wide micro-batch number
        (``gptforge.train.batches.batch_index``; a pure function of it, so a resumed run sees the
        same data); loss_fn: ``(model, batch) -> (loss, stats)``, loss a scalar in nats per scored
        token, stats a dict of scalar tensors (DPO's reward margin and accuracy; the loop records
        their mean as ``train_<name>``), see ``gptforge.train.step.optimizer_step``;
        val_batches: ``(rank, world, device) -> iterable of (x, y)``, the same fixed set every time;
        train_tokens / eval_tokens: sizes for the log (tokens);
    tokenizer_json: the tokenizer file copied into every checkpoint; tokenizer: its identity
        (kind, vocab_size, sha256); token_bytes: (V,) int64 UTF-8 bytes per id, for bits per byte.

    evaluate: None (val loss and bpb of ``val_batches``), or ``(model, d, amp) -> dict`` with
    ``val_loss`` and any other ``val_*`` metrics, summed over ranks by the callee.
    sampler: None, or a batch source whose batches also depend on the losses seen so far (the
    curriculum sampler): its ``state_arrays()`` go into every checkpoint, ``load_state_arrays(arrays,
    where)`` takes them back on resume, and the run is refused under DDP (a rank sees only its own
    rows' losses).
    """

    batches: object
    loss_fn: Callable
    val_batches: Callable
    train_tokens: int
    eval_tokens: int
    tokenizer_json: Path
    tokenizer: dict
    token_bytes: np.ndarray
    evaluate: Callable | None = None
    sampler: object | None = None


def shard_data(cfg: TrainConfig) -> TrainData:
    """Pretraining data: windows of the shards in ``cfg.data``.

    Raises:
        UserError: no --data, unreadable or invalid shards, or a split shorter than block_size + 1.
    """
    if not cfg.data:
        raise UserError("no data: pass --data DIR (a shard directory from `gptforge data prepare`)")
    shards = open_shards(cfg.data)
    train_tokens, val_tokens = shards.tokens("train"), shards.tokens("val")
    for split, toks in (("train", train_tokens), ("val", val_tokens)):
        if len(toks) < cfg.block_size + 1:
            raise UserError(f"{cfg.data}: the {split} split has {len(toks)} tokens, fewer than "
                            f"block_size + 1 = {cfg.block_size + 1}; lower --block-size")
    T = cfg.block_size
    offsets = eval_offsets(len(val_tokens), T, cfg.eval_tokens)
    if cfg.sampling == "curriculum":  # opt-in: its loss function feeds the per-row losses back to it
        if len(train_tokens) < cfg.chunk_windows * T + 1:
            raise UserError(f"{cfg.data}: the train split has {len(train_tokens)} tokens, fewer than one "
                            f"curriculum chunk (chunk_windows x block_size + 1 = "
                            f"{cfg.chunk_windows * T + 1}); lower --chunk-windows")
        batches = CurriculumBatches(train_tokens, cfg.batch_size, T, cfg.seed, cfg.chunk_windows,
                                    cfg.curriculum_mix)
        loss_fn, sampler = batches.loss, batches
    elif cfg.sampling == "packed":
        batches = PackedBatches(train_tokens, cfg.batch_size, T, cfg.seed, shards.meta["tokenizer"]["eot_id"])
        loss_fn, sampler = batches.loss, None
        if os.environ.get("RANK", "0") == "0":
            print(batches.describe(), file=sys.stderr)
    else:
        batches = PretrainBatches(train_tokens, cfg.batch_size, T, cfg.seed, cfg.sampling)
        loss_fn, sampler = lm_loss, None
    return TrainData(
        batches=batches, loss_fn=loss_fn, sampler=sampler,
        val_batches=lambda rank, world, device: window_batches(val_tokens, offsets[rank::world], T,
                                                               cfg.batch_size, device),
        train_tokens=len(train_tokens), eval_tokens=len(offsets) * T,
        tokenizer_json=shards.path / "tokenizer.json", tokenizer=shards.meta["tokenizer"],
        token_bytes=shards.tokenizer().token_bytes())


# --- the session ---------------------------------------------------------------------------------
@dataclass
class Session:
    """What one training process holds. ``model`` is what the loop calls (compiled and/or DDP);
    ``raw_model`` the module itself (saved, clipped, counted; sharded in place under FSDP);
    ``eval_model`` the model without DDP. ``sharded``: FSDP2 holds the parameters as DTensor shards;
    ``full_model`` is then, on rank 0, the CPU copy that a checkpoint gathers the weights into."""

    cfg: TrainConfig
    d: Dist
    run_dir: Path
    lock: object
    data: TrainData
    token_bytes: torch.Tensor  # (V,) int64 on the device: UTF-8 bytes each token id stands for
    raw_model: torch.nn.Module
    model: torch.nn.Module
    eval_model: torch.nn.Module
    optimizers: list
    state: RunState
    amp: object
    dtype: str
    accum: int
    tokens_per_step: int
    total_steps: int
    flops_per_token: int
    peak: float | None  # FLOP/s per device, the MFU denominator (rank 0 only)
    peak_dtype: torch.dtype  # the dtype that peak is for
    sharded: bool = False
    full_model: torch.nn.Module | None = None

    def evaluate(self) -> dict:
        """Validation metrics of the current weights: ``val_loss`` (nats/token; DPO: its loss),
        ``val_bpb`` (bits/byte; absent for DPO) and any others the data's ``evaluate`` gives;
        loss and bpb are recorded in the run state."""
        if self.data.evaluate is not None:
            res = self.data.evaluate(self.eval_model, self.d, self.amp)
        else:
            batches = self.data.val_batches(self.d.rank, self.d.world, self.d.device)
            loss, bpb = evaluate(self.eval_model, batches, self.token_bytes, self.amp, self.d,
                                 lockstep=self.sharded)
            res = {"val_loss": loss, "val_bpb": bpb}
        self.state.val_loss, self.state.val_bpb = res["val_loss"], res.get("val_bpb")
        self.state.val_step = self.state.step
        return res

    def save(self) -> Path | None:
        """Checkpoint the current step (every rank calls it: RNG streams are gathered); it becomes
        ``best`` when evaluated at this step with the lowest val loss so far. Returns the checkpoint
        directory on rank 0."""
        st = self.state
        st.rng = self.d.gather(ckpt.rng_state(self.d.device))  # every rank's streams, for an exact resume
        is_best = st.val_step == st.step and (st.best_val_loss is None or st.val_loss < st.best_val_loss)
        if is_best:
            st.best_val_loss = st.val_loss
        sampler = self.data.sampler
        st.data = {"sampling": self.cfg.sampling, "seed": self.cfg.seed, "next_step": st.step,
                   "batch": "pure function of (seed, (step * accum + micro) * world + rank)"
                            + (" and the curriculum table in sampler.safetensors" if sampler else "")}
        model, optimizers = self.raw_model, self.optimizers
        if self.sharded:
            model, optimizers = gather_full_state(self.raw_model, self.optimizers, self.full_model)
        if not self.d.main:
            return None
        return ckpt.save_checkpoint(self.run_dir, model, optimizers, st,
                                    self.data.tokenizer_json, is_best=is_best, keep_last=self.cfg.keep_last,
                                    sampler=sampler.state_arrays() if sampler else None)


def setup(cfg: TrainConfig, resume: bool, d: Dist, data: TrainData | None = None) -> Session:
    """Build the Session for ``cfg`` (``data`` defaults to the pretraining shards of ``cfg.data``).
    A fresh run starts from ``cfg.init_from``'s weights when it is set (finetuning), else from a
    new model; with ``resume``, weights, optimizer state, RNG streams and the run state come from
    ``cfg.out``'s latest checkpoint.

    Raises:
        UserError: bad data, an unusable run directory, or a checkpoint that does not match.
    """
    cores = os.cpu_count() or 1
    torch.set_num_threads(min(cfg.threads, cores) if cfg.threads else max(1, cores // d.local_world))
    if d.device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for any float32 matmul
    native_bf16 = (torch.cuda.is_bf16_supported() if d.device.type == "cuda" else
                   d.device.type == "cpu" and cpu_native_bf16())
    dtype = cfg.dtype if cfg.dtype != "auto" else "bfloat16" if native_bf16 else "float32"
    amp = (torch.autocast(d.device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
           else contextlib.nullcontext())
    peak_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32

    data = data or shard_data(cfg)
    if data.sampler is not None and d.world > 1:
        raise UserError("sampling curriculum runs in one process only (each DDP rank would see only "
                        "its own rows' losses); use sampling random under torchrun")
    sharded = cfg.parallel == "fsdp" and d.world > 1
    if sharded and data.evaluate is not None:  # DPO's and RL's evaluations do not run in lockstep
        raise UserError(f"parallel fsdp: pretraining and SFT only, not {cfg.task}; use parallel ddp")
    if cfg.schedule_time and not replannable(cfg):
        raise UserError("config: schedule_time re-plans a wsd schedule's length; it needs schedule = "
                        "'wsd' and decay_steps = 0")
    lock = claim_run_dir(cfg, resume, d)
    B, T = cfg.batch_size, cfg.block_size
    micro_tokens = B * T * d.world
    tokens_per_step = cfg.tokens_per_step or micro_tokens
    if tokens_per_step % micro_tokens:
        raise UserError(f"config: tokens_per_step ({tokens_per_step}) must be a multiple of "
                        f"batch_size x block_size x processes = {B} x {T} x {d.world} = {micro_tokens}")
    raw_model, state = _model_and_state(cfg, resume, data.tokenizer, tokens_per_step)
    state.config = saved_config(cfg, Path(cfg.out))
    state.tokens_per_step, state.world_size = tokens_per_step, d.world
    use_cpu_kernels(raw_model)  # the CPU's faster Dropout, as before it was opt-in (torch's elsewhere)
    full_model = shard(raw_model, d) if sharded else raw_model.to(d.device)
    model = eval_model = torch.compile(raw_model) if cfg.compile else raw_model
    if d.ddp and not sharded:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    optimizers = build_optimizers(raw_model, cfg, d.device.type)
    if resume:
        _restore(state, optimizers, data.sampler, d, sharded)
    else:
        torch.manual_seed(cfg.seed + d.rank)  # distinct dropout streams per rank; same init on all
    total_steps = (resume and cfg.schedule_time and state.schedule_steps  # a resumed timed run: its last plan
                   or schedule_steps(cfg, tokens_per_step))
    if cfg.schedule_time:
        state.schedule_steps = total_steps
    return Session(
        cfg=cfg, d=d, run_dir=Path(cfg.out), lock=lock, data=data,
        token_bytes=torch.from_numpy(data.token_bytes.astype(np.int64)).to(d.device),
        raw_model=raw_model, model=model, eval_model=eval_model, optimizers=optimizers, state=state,
        amp=amp, dtype=dtype, accum=tokens_per_step // micro_tokens, tokens_per_step=tokens_per_step,
        total_steps=total_steps, flops_per_token=raw_model.flops_per_token(),
        peak=peak_flops(d.device, peak_dtype) if d.main else None, peak_dtype=peak_dtype,
        sharded=sharded, full_model=full_model if sharded and d.main else None)


def _model_and_state(cfg: TrainConfig, resume: bool, tokenizer: dict, tokens_per_step: int):
    """(model on the CPU in train mode, RunState): resumed from ``cfg.out``'s latest checkpoint,
    started from ``cfg.init_from``'s weights, or a new model initialised with ``cfg.seed``.
    Raises UserError for a checkpoint that does not fit (tokenizer, tokens per step, context)."""
    torch.manual_seed(cfg.seed)
    if not resume and not cfg.init_from:
        gpt_dial = {"preset": cfg.preset, "depth": cfg.depth} if cfg.arch == "gpt" else {}
        model = build_model(cfg.arch, vocab_size=int(tokenizer["vocab_size"]), block_size=cfg.block_size,
                            **gpt_dial, **cfg.model)
        return model, RunState(tokenizer=tokenizer, model_config=model_config(model),
                               num_params=model.num_params())
    # weights from a checkpoint: this run's own (its LoRA adapter, if any, apart), or the one it
    # starts from (merged)
    model, loaded = ckpt.load_checkpoint(cfg.out if resume else cfg.init_from, "latest",
                                         merge_lora=not resume)
    model.train()
    if loaded.tokenizer.get("sha256") != tokenizer.get("sha256"):
        raise UserError(f"{cfg.data}: this data was made with a different tokenizer than the "
                        f"checkpoint {loaded.path} was trained on")
    if resume:
        if loaded.tokens_per_step not in (None, tokens_per_step):
            raise UserError(f"--resume: tokens per step would change from {loaded.tokens_per_step} to "
                            f"{tokens_per_step} (batch_size, tokens_per_step or the process count differ "
                            f"from checkpoint {loaded.path})")
        return model, loaded
    if cfg.block_size > model.config.block_size:  # finetuning at a longer context: RoPE only
        try:
            model = with_block_size(model, cfg.block_size)
        except UserError as e:
            raise UserError(f"--block-size {cfg.block_size} is longer than the context of {loaded.path} "
                            f"({model.config.block_size}): {e}") from None
    if cfg.lora:  # adapters on the loaded weights, drawn from the seed; the rest frozen
        model = add_lora(model, parse_lora(cfg.lora))
    return model, RunState(tokenizer=tokenizer, model_config=model_config(model),
                           num_params=model.num_params())


def _restore(state: RunState, optimizers: list, sampler, d: Dist, sharded: bool) -> None:
    """Resume: the optimizer state, the sampler's table (if any) and this rank's RNG streams from
    checkpoint ``state.path``. Raises UserError for a missing or mismatched state or table."""
    path = Path(state.path)
    ckpt.load_optimizer_state(optimizers, path, "cpu" if sharded else d.device)
    if sampler is not None:
        table = ckpt.read_sampler_state(path)
        if table is None:  # the run switched to curriculum sampling on this resume
            print(f"note: checkpoint {path} has no curriculum table; it starts empty", file=sys.stderr)
        else:
            try:
                sampler.load_state_arrays(table, str(path / ckpt.SAMPLER_FILE))
            except ValueError as e:
                raise UserError(str(e)) from None
    if len(state.rng) == d.world:
        ckpt.set_rng_state(state.rng[d.rank], d.device, path / "trainer.json")
    elif d.main:
        print(f"note: checkpoint saved by {len(state.rng)} processes, resuming with {d.world}: "
              "RNG streams (dropout) restart from the seed", file=sys.stderr)


# --- FSDP ----------------------------------------------------------------------------------------
def shard(model: torch.nn.Module, d: Dist) -> torch.nn.Module | None:
    """Shard ``model`` in place over all processes with FSDP2 (``torch.distributed.fsdp.fully_shard``):
    each element of an ``nn.ModuleList`` (GPT's blocks) is a unit whose parameters are all-gathered
    just before its forward and backward pass, the rest of the model the root unit. Parameters
    become DTensors sharded on dim 0 and move to ``d.device``; gradients are reduce-scattered
    (averaged over ranks) after each backward pass. Returns, on rank 0, a CPU copy of the unsharded
    model that ``gather_full_state`` fills at each checkpoint (None on other ranks).

    The full model is built on the CPU of every process first (from its seed or the checkpoint),
    so a model must fit in CPU memory, not in one device's. Source: PyTorch's FSDP2 tutorial.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    full = copy.deepcopy(model) if d.main else None
    mesh = init_device_mesh(d.device.type, (d.world,))
    units = [m for lst in model.modules() if isinstance(lst, torch.nn.ModuleList) for m in lst]
    for m in units:
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return full


def gather_full_state(model: torch.nn.Module, optimizers: list, full_model: torch.nn.Module | None):
    """The full weights and optimizer state of sharded ``model`` (every rank calls it: each DTensor
    is all-gathered, one at a time, so a device holds one full tensor at most). Returns
    ``(full_model, [optimizer state dict])`` on rank 0, the weights copied into ``full_model`` and
    the state dicts' tensors on the CPU, in the format of an unsharded run's; ``(None, None)`` on
    the other ranks."""
    from torch.distributed.tensor import DTensor

    keep = full_model is not None

    def full(v):
        v = v.full_tensor() if isinstance(v, DTensor) else v
        return v.cpu() if keep and isinstance(v, torch.Tensor) else v

    target = full_model.state_dict() if keep else {}
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v = full(v)
            if keep:
                target[k].copy_(v)
    states = []
    for opt in optimizers:
        sd = opt.state_dict()
        states.append({**sd, "state": {i: {k: full(v) for k, v in st.items()}
                                       for i, st in sd["state"].items()}})
    return (full_model, states) if keep else (None, None)
