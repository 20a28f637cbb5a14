"""The pretraining loop: ``train(cfg) -> summary``.

One optimizer step = ``accum`` micro steps of B x T tokens on each of ``world`` devices, so
``tokens_per_step = B * T * accum * world``. The loss is the mean cross-entropy in nats per
token; gradients are averaged over micro steps (loss / accum) and, under DDP, over ranks.

Run under ``torchrun`` it uses PyTorch DDP (NCCL on CUDA, gloo on CPU); rank 0 logs and saves.

Each step appends one record to ``RUN_DIR/metrics.jsonl``::

    {"step": 100, "tokens": 409600, "train_loss": 2.31, "lr": 0.003, "grad_norm": 0.41,
     "tokens_per_s": 5120.0, "mfu": 0.21, "time_s": 80.2, "train_time_s": 71.5, "val_loss": 2.35,
     "val_bpb": 3.39}

``step`` counts optimizer steps done, ``tokens`` training tokens seen (all devices),
``train_loss``/``val_loss`` are nats per token, ``val_bpb`` bits per UTF-8 byte, ``mfu`` a
fraction (not %), ``time_s`` wall seconds since the run began (across resumed sessions),
``train_time_s`` the part of it spent in optimizer steps (no evaluation, checkpoints or logging);
``val_*`` appear on evaluation steps only (step 0 has no ``train_loss``).

Stopping: ``max_steps`` / ``max_tokens`` / ``max_time`` or SIGINT/SIGTERM all finish the current
step, evaluate, save a checkpoint and return normally. A second Ctrl-C kills at once; the last
complete checkpoint stays intact (see checkpoint.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from gptforge.errors import UserError
from gptforge.train import checkpoint as ckpt
from gptforge.train.config import FIXED_ON_RESUME, TrainConfig, format_config, make_config
from gptforge.train.data import eval_offsets, get_batch, train_batch
from gptforge.train.mfu import peak_flops
from gptforge.train.optim import build_optimizers, lr_multiplier, schedule_steps, set_lr


# --- process setup ------------------------------------------------------------------------------
class Dist:
    """This process's place in the job: rank, world size, device. World size 1 without torchrun."""

    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        kind = device_pref
        if kind == "auto":
            kind = ("cuda" if torch.cuda.is_available()
                    else "mps" if torch.backends.mps.is_available() else "cpu")
        if kind == "cuda" and not torch.cuda.is_available():
            raise UserError("device 'cuda' requested but CUDA is not available")
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
        for sig, old in self._old.items():
            signal.signal(sig, old)
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving (again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# --- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: np.ndarray, offsets: np.ndarray, T: int, B: int,
             token_bytes: torch.Tensor, amp, d: Dist) -> tuple[float, float]:
    """``(val_loss, val_bpb)`` on the windows at ``offsets`` (split over ranks, summed over all).

    val_loss: mean cross-entropy over all target tokens, nats/token. val_bpb: bits per UTF-8 byte,
    ``sum(nats) / ln 2 / sum(bytes)`` over targets that stand for text; special tokens such as
    ``<|endoftext|>`` (0 bytes) are left out of both sums (nanochat's convention), so bpb compares
    across tokenizers.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # nats, tokens, nats on text tokens, bytes
    mine = offsets[d.rank::d.world]
    for i in range(0, len(mine), B):
        x, y = get_batch(tokens, mine[i:i + B], T, d.device)
        with amp:
            logits, _ = model(x, y)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        nbytes = token_bytes[y.flatten()]
        sums += torch.stack([nats.sum(), torch.tensor(nats.numel(), device=nats.device),
                             nats[nbytes > 0].sum(), nbytes.sum()]).double().cpu()
    d.all_sum(sums)
    model.train(was_training)
    nats, n, text_nats, nbytes = sums.tolist()
    return nats / n, (text_nats / math.log(2) / nbytes) if nbytes else float("nan")


# --- helpers -----------------------------------------------------------------------------------
def _model_kwargs(cfg: TrainConfig) -> dict:
    extra = {"preset": cfg.preset, "depth": cfg.depth} if cfg.arch == "gpt" else {}
    return {**extra, **cfg.model}


def _build_model(cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    from gptforge.models import build_model

    try:
        return build_model(cfg.arch, vocab_size=vocab_size, block_size=cfg.block_size, **_model_kwargs(cfg))
    except TypeError as e:
        raise UserError(f"config: bad model settings for arch {cfg.arch!r} ({e})") from None


def _open_data(cfg: TrainConfig):
    from gptforge.data.shards import open_shards

    if not cfg.data:
        raise UserError("no data: pass --data DIR (a shard directory from `gptforge data prepare`)")
    shards = open_shards(cfg.data)
    train_tokens, val_tokens = shards.tokens("train"), shards.tokens("val")
    for split, toks in (("train", train_tokens), ("val", val_tokens)):
        if len(toks) < cfg.block_size + 1:
            raise UserError(f"{cfg.data}: the {split} split has {len(toks)} tokens, fewer than "
                            f"block_size + 1 = {cfg.block_size + 1}; lower --block-size")
    return shards, train_tokens, val_tokens


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records past ``last_step`` (written after the checkpoint a resumed run starts from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def resume_config(run_dir: str | os.PathLike, *overrides: dict) -> TrainConfig:
    """The config saved in ``run_dir``'s latest checkpoint, with ``overrides`` applied in order
    (budgets, intervals, device, ...); ``out`` is set to ``run_dir``.

    Raises:
        UserError: no/corrupt checkpoint, or an override of a model-shape key (arch, preset,
            depth, model, block_size) that differs from the checkpoint.
    """
    ck = ckpt.find_checkpoint(run_dir, "latest")
    saved = ckpt.read_trainer_state(ck)["config"]
    for layer in overrides:
        for k in FIXED_ON_RESUME:
            if k in layer and layer[k] != saved.get(k) and not (k == "model" and not layer[k]):
                raise UserError(f"--resume: {k} cannot change in a resumed run (checkpoint {ck} has "
                                f"{k} = {saved.get(k)!r})")
    cfg = make_config(saved, *overrides, {"out": str(run_dir)})
    return cfg


# --- the loop ----------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Pretrain as ``cfg`` says; return a summary dict.

    With ``resume=True``, continue the run in ``cfg.out`` from its latest checkpoint (weights,
    optimizer state, step, RNG states, data position), so the losses continue exactly as if the
    run had never stopped (bit for bit on CPU with the same world size and settings).

    Summary keys: run_dir, checkpoint (path of the last save), step, tokens, train_loss, val_loss,
    val_bpb (nats/token, nats/token, bits/byte), best_val_loss (the lowest val loss of a saved
    checkpoint, the one ``ckpt/best`` names), stopped_by (max_steps, max_tokens, max_time,
    signal), time_s (this session), train_time_s (in optimizer steps, whole run), tokens_per_s, mfu,
    num_params.

    Raises:
        UserError: bad config, missing data, an existing run dir without ``resume``, or a
            missing/corrupt/incompatible checkpoint.
    """
    d = Dist(cfg.device)
    try:
        return _train(cfg, resume, d)
    finally:
        d.close()


def _train(cfg: TrainConfig, resume: bool, d: Dist) -> dict:
    from gptforge.models import model_config

    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // d.local_world))
    if d.device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for any float32 matmul
    dtype = cfg.dtype if cfg.dtype != "auto" else (
        "bfloat16" if d.device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32")
    amp = (torch.autocast(d.device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
           else contextlib.nullcontext())

    # -- run directory
    if not cfg.out:
        cfg.out = d.broadcast(str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")))
    run_dir = Path(cfg.out)
    if not resume and ckpt.read_pointer(run_dir / "ckpt", "latest"):
        raise UserError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                        "or choose another --out")

    # -- data and model
    shards, train_tokens, val_tokens = _open_data(cfg)
    tok_identity = shards.meta["tokenizer"]
    V = int(tok_identity["vocab_size"])
    B, T = cfg.batch_size, cfg.block_size
    micro_tokens = B * T * d.world
    tokens_per_step = cfg.tokens_per_step or micro_tokens
    if tokens_per_step % micro_tokens:
        raise UserError(f"config: tokens_per_step ({tokens_per_step}) must be a multiple of "
                        f"batch_size x block_size x processes = {B} x {T} x {d.world} = {micro_tokens}")
    accum = tokens_per_step // micro_tokens
    total_steps = schedule_steps(cfg, tokens_per_step)

    state: dict = {}
    torch.manual_seed(cfg.seed)
    if resume:
        raw_model, state = ckpt.load_checkpoint(run_dir, "latest")
        raw_model.train()
        ck_dir = Path(state["path"])
        if state["tokenizer"].get("sha256") != tok_identity.get("sha256"):
            raise UserError(f"{cfg.data}: these shards were made with a different tokenizer than the "
                            f"checkpoint {ck_dir} was trained on")
        if state.get("tokens_per_step") not in (None, tokens_per_step):
            raise UserError(f"--resume: tokens per step would change from {state['tokens_per_step']} to "
                            f"{tokens_per_step} (batch_size, tokens_per_step or the process count differ "
                            f"from checkpoint {ck_dir})")
    else:
        raw_model = _build_model(cfg, V)
    raw_model.to(d.device)
    model = torch.compile(raw_model) if cfg.compile else raw_model
    eval_model = model
    if d.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    optimizers = build_optimizers(raw_model, cfg, d.device.type)
    if resume:
        ckpt.load_optimizer_state(optimizers, ck_dir, d.device)
        rngs = state.get("rng") or []
        if len(rngs) == d.world:
            ckpt.set_rng_state(rngs[d.rank], d.device)
        elif d.main:
            print(f"note: checkpoint saved by {len(rngs)} processes, resuming with {d.world}: "
                  "RNG streams (dropout) restart from the seed", file=sys.stderr)
    else:
        torch.manual_seed(cfg.seed + d.rank)  # distinct dropout streams per rank; same init on all

    step = int(state.get("step", 0))
    tokens_seen = int(state.get("tokens", 0))
    time_offset = float(state.get("time_s", 0.0))
    train_time = float(state.get("train_time_s", 0.0))  # seconds inside optimizer steps only
    best_val = state.get("best_val_loss")
    last_val = state.get("val_loss")
    num_params = raw_model.num_params()
    flops_per_token = raw_model.flops_per_token() if hasattr(raw_model, "flops_per_token") else 6 * num_params
    token_bytes = torch.from_numpy(shards.tokenizer().token_bytes().astype(np.int64)).to(d.device)
    val_offsets = eval_offsets(len(val_tokens), T, cfg.eval_tokens)
    ckpt_every = cfg.ckpt_interval or cfg.eval_interval

    # -- logging (rank 0)
    metrics_path = run_dir / "metrics.jsonl"
    peak = None
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            _truncate_metrics(metrics_path, step)
        else:
            (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
            metrics_path.unlink(missing_ok=True)
        peak = peak_flops(d.device, torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        print(f"{'resuming' if resume else 'pretraining'} {cfg.arch} ({num_params:,} parameters, "
              f"{flops_per_token:,} FLOPs/token) in {run_dir}")
        print(format_config(cfg))
        print(f"  -> {d.world} process(es) on {d.device.type}, {dtype}, B={B} T={T} accum={accum}: "
              f"{tokens_per_step:,} tokens/step, {total_steps} steps in the schedule; "
              f"{len(train_tokens):,} train / {len(val_offsets) * T:,} eval tokens", flush=True)
    show_bar = d.main and (cfg.progress == "bar" or (cfg.progress == "auto" and sys.stderr.isatty()))
    log_lines = d.main and (cfg.progress == "log" or (cfg.progress == "auto" and not show_bar))
    budget_steps = cfg.max_steps
    if cfg.max_tokens:
        budget_steps = min(budget_steps, -(-cfg.max_tokens // tokens_per_step))
    bar = tqdm(total=budget_steps, initial=step, unit="step", disable=not show_bar, dynamic_ncols=True)
    say = bar.write if show_bar else print
    metrics_file = open(metrics_path, "a") if d.main else None

    def run_eval() -> None:
        nonlocal last_val, last_bpb, val_step
        last_val, last_bpb = evaluate(eval_model, val_tokens, val_offsets, T, B, token_bytes, amp, d)
        val_step = step
        if d.main:
            say(f"step {step}: val loss {last_val:.4f} nats/token, {last_bpb:.4f} bits/byte")

    def log(record: dict) -> None:
        if d.main:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()

    def save() -> None:
        nonlocal last_ckpt, saved_at, best_val
        rng = d.gather(ckpt.rng_state(d.device))  # every rank's streams, for an exact resume
        saved_at = step
        # "best": the lowest val loss among checkpoints evaluated at the step they were saved
        is_best = val_step == step and (best_val is None or last_val < best_val)
        best_val = last_val if is_best else best_val
        if not d.main:
            return
        trainer_state = {
            "step": step, "tokens": tokens_seen, "time_s": time_offset + time.time() - t_start,
            "train_time_s": train_time, "tokens_per_step": tokens_per_step, "world_size": d.world, "rng": rng,
            "data": {"sampling": cfg.sampling, "seed": cfg.seed, "next_step": step,
                     "batch": "pure function of (seed, (step * accum + micro) * world + rank)"},
            "val_loss": last_val, "val_bpb": last_bpb, "val_step": val_step, "best_val_loss": best_val,
            "config": cfg.to_dict(), "model_config": model_config(raw_model), "tokenizer": tok_identity,
            "num_params": num_params,
        }
        last_ckpt = ckpt.save_checkpoint(run_dir, step, raw_model, optimizers, trainer_state,
                                         shards.path / "tokenizer.json", is_best=is_best,
                                         keep_last=cfg.keep_last)

    t_start = time.time()
    last_bpb, val_step = state.get("val_bpb"), state.get("val_step")
    saved_at = step if resume else None
    last_ckpt = ck_dir if resume else None
    stopped_by, train_loss, tok_s, mfu = None, None, 0.0, None
    with StopSignal() as stop:
        if not resume:  # the curve starts at the untrained model
            run_eval()
            log({"step": 0, "tokens": 0, "val_loss": last_val, "val_bpb": last_bpb, "time_s": 0.0,
                 "train_time_s": 0.0})
        while True:
            # -- budgets, agreed by all ranks (rank 0's clock decides max_time)
            time_up = d.main and cfg.max_time > 0 and time.time() - t_start >= cfg.max_time
            flags = torch.tensor([float(stop.received is not None), float(time_up)])
            d.all_sum(flags)
            if step >= cfg.max_steps:
                stopped_by = "max_steps"
            elif cfg.max_tokens and tokens_seen >= cfg.max_tokens:
                stopped_by = "max_tokens"
            elif flags[1] > 0:
                stopped_by = "max_time"
            elif flags[0] > 0:
                stopped_by = "signal"
            if stopped_by:
                break

            # -- one optimizer step
            t0 = time.time()
            lr_mult = lr_multiplier(step, cfg, total_steps)
            set_lr(optimizers, lr_mult)
            loss_sum = torch.zeros((), device=d.device)
            for micro in range(accum):
                x, y = train_batch(train_tokens, B, T, cfg.seed, cfg.sampling, step, micro, accum,
                                   d.rank, d.world, d.device)
                last = micro == accum - 1
                with model.no_sync() if d.ddp and not last else contextlib.nullcontext():
                    with amp:
                        _, loss = model(x, y)
                    (loss / accum).backward()
                loss_sum += loss.detach().float()
            grad_norm = (torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
                         if cfg.grad_clip > 0 else None)
            for opt in optimizers:
                opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            train_loss = d.all_sum((loss_sum / accum).reshape(1)).item() / d.world
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"step {step}: training loss is {train_loss}; lower the lr?")
            dt = time.time() - t0
            train_time += dt
            tok_s = tokens_per_step / dt
            mfu = flops_per_token * tok_s / d.world / peak if peak else None

            # -- evaluate, log, save
            record = {"step": step, "tokens": tokens_seen, "train_loss": train_loss,
                      "lr": cfg.lr * lr_mult, "grad_norm": None if grad_norm is None else grad_norm.item(),
                      "tokens_per_s": tok_s, "mfu": mfu, "time_s": time_offset + time.time() - t_start,
                      "train_time_s": train_time}
            if step % cfg.eval_interval == 0:
                run_eval()
                record.update(val_loss=last_val, val_bpb=last_bpb)
            log(record)
            if d.main:
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{last_val:.4f}" if last_val else "-",
                                tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}" if mfu is not None else "-")
                if log_lines and (step % cfg.log_interval == 0 or step == 1):
                    mfu_s = f"{mfu:.1%}" if mfu is not None else "-"
                    say(f"step {step}/{budget_steps} | loss {train_loss:.4f} | lr {cfg.lr * lr_mult:.2e} | "
                        f"{tok_s:,.0f} tok/s | MFU {mfu_s} | {record['time_s']:.0f}s")
            if step % ckpt_every == 0:
                save()

        # -- the end: evaluate and save what has not been
        if val_step != step:
            run_eval()
            log({"step": step, "tokens": tokens_seen, "val_loss": last_val, "val_bpb": last_bpb,
                 "time_s": time_offset + time.time() - t_start, "train_time_s": train_time})
        if saved_at != step:
            save()
    bar.close()
    elapsed = time.time() - t_start
    if d.main:
        metrics_file.close()
        say(f"stopped by {stopped_by} at step {step} ({tokens_seen:,} tokens, {elapsed:.1f}s); "
            f"val loss {last_val:.4f}; checkpoint {last_ckpt}")
    return {"run_dir": str(run_dir), "checkpoint": str(last_ckpt) if last_ckpt else None, "step": step,
            "tokens": tokens_seen, "train_loss": train_loss, "val_loss": last_val,
            "val_bpb": last_bpb, "best_val_loss": best_val, "stopped_by": stopped_by,
            "time_s": elapsed, "train_time_s": train_time, "tokens_per_s": tok_s, "mfu": mfu,
            "num_params": num_params}
