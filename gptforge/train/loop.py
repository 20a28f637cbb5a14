"""The training loop: ``train(cfg) -> summary``.

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

With ``schedule_time`` (wsd only) the step budget is re-planned before each step until the
warmdown begins, from the mean time of the latest steps, so that the schedule, warmdown
included, fills that many seconds of optimizer steps; ``max_steps`` is only the first plan.

Stopping: ``max_steps`` / ``max_tokens`` / ``max_time`` or SIGINT/SIGTERM all finish the current
step, evaluate, save a checkpoint and return normally. A second Ctrl-C kills at once; the last
complete checkpoint stays intact (see gptforge/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import torch

from gptforge import checkpoint as ckpt
from gptforge.errors import UserError
from gptforge.io import write_json
from gptforge.train.config import FIXED_ON_RESUME, TrainConfig, format_config, make_config
from gptforge.train.log import Logger, MetricsFile
from gptforge.train.mfu import describe_peak, device_peak, mfu_caveat
from gptforge.train.optim import lr_multiplier, replan_steps, set_lr
from gptforge.train.session import Dist, StopSignal, TrainData, setup

REPLAN_AFTER = 10  # step times measured in this session before schedule_time re-plans


def train(cfg: TrainConfig, resume: bool = False, logger: Logger | None = None,
          data: TrainData | None = None) -> dict:
    """Train as ``cfg`` says; return a summary dict.

    With ``resume=True``, continue the run in ``cfg.out`` from its latest checkpoint (weights,
    optimizer state, step, RNG states, data position), so the losses continue exactly as if the
    run had never stopped (bit for bit on CPU with the same world size and settings).
    ``logger``: where progress goes (default ``Logger(cfg.progress, cfg.log_interval)``;
    ``Logger("none")`` is silent). ``data``: what to train on (default: the pretraining shards in
    ``cfg.data``; SFT passes conversations, see gptforge.chat.sft).

    Summary keys: run_dir, checkpoint (path of the last save), step, tokens, train_loss, val_loss,
    val_bpb (nats/token, nats/token, bits/byte), best_val_loss (the lowest val loss of a saved
    checkpoint, the one ``ckpt/best`` names), stopped_by (max_steps, max_tokens, max_time,
    signal), time_s (this session, wall), train_time_s (in optimizer steps, whole run),
    step_times_s (this session's optimizer steps, seconds each), tokens_per_s, mfu, num_params,
    peak_flops (the MFU denominator, FLOP/s per device).

    Raises:
        UserError: bad config, missing data, an existing run dir without ``resume``, or a
            missing/corrupt/incompatible checkpoint.
    """
    d = Dist(cfg.device)
    try:
        s = setup(cfg, resume, d, data)
        log = (logger or Logger(cfg.progress, cfg.log_interval)) if d.main else Logger("none")
        try:
            return _loop(s, log, resume)
        finally:
            log.close()
            if s.lock is not None:
                s.lock.close()
    finally:
        d.close()


def _loop(s, log: Logger, resume: bool) -> dict:
    cfg, d, st = s.cfg, s.d, s.state
    metrics = MetricsFile(s.run_dir, st.step if resume else None, enabled=d.main)
    peak_dtype, mfu_explained = torch.bfloat16 if s.dtype == "bfloat16" else torch.float32, False
    if d.main and not resume:
        write_json(s.run_dir / "config.json", cfg.to_dict())
    log.info(f"{'resuming' if resume else 'training'} {cfg.arch} ({st.num_params:,} parameters, "
             f"{s.flops_per_token:,} FLOPs/token) in {s.run_dir}\n{format_config(cfg)}\n"
             f"  -> {d.world} process(es) on {d.device.type}, {s.dtype}, B={cfg.batch_size} "
             f"T={cfg.block_size} accum={s.accum}: {s.tokens_per_step:,} tokens/step, {s.total_steps} steps "
             f"in the schedule; {s.data.train_tokens:,} train / {s.data.eval_tokens:,} "
             f"eval tokens" + (f"\n  {describe_peak(d.device, peak_dtype)}" if d.main else ""))
    t_start, time_offset, saved_at, last_ckpt = time.time(), st.time_s, None, st.path
    if resume:
        saved_at = st.step
    step_times, train_loss, tok_s, mfu, stopped_by = [], None, 0.0, None, None

    log.start(s.total_steps if cfg.schedule_time else s.budget_steps, st.step)
    with StopSignal() as stop:
        if not resume:  # the curve starts at the untrained model
            metrics.write({"step": 0, "tokens": 0, **_evaluate(s, log), "time_s": 0.0, "train_time_s": 0.0})
        while True:
            # -- budgets, agreed by all ranks (rank 0's clock decides max_time and schedule_time)
            time_up = d.main and cfg.max_time > 0 and time.time() - t_start >= cfg.max_time
            planned = s.total_steps
            if cfg.schedule_time and d.main and len(step_times) >= REPLAN_AFTER:
                recent = step_times[max(2, len(step_times) - 50):]  # the last 50, the first 2 left out
                step_s = sum(recent) / len(recent)
                planned = replan_steps(st.step, s.total_steps, cfg, st.train_time_s, step_s)
            flags = d.all_sum(torch.tensor([float(stop.received is not None), float(time_up),
                                            float(planned) if d.main else 0.0], dtype=torch.float64))
            if int(flags[2]) != s.total_steps:
                s.total_steps = st.schedule_steps = int(flags[2])
                log.replan(s.total_steps)
            step_budget = s.total_steps if cfg.schedule_time else cfg.max_steps
            stopped_by = ("max_steps" if st.step >= step_budget else
                          "max_tokens" if cfg.max_tokens and st.tokens >= cfg.max_tokens else
                          "max_time" if flags[1] > 0 else "signal" if flags[0] > 0 else None)
            if stopped_by:
                break

            # -- one optimizer step: accum micro-batches, clip, step
            t0 = time.time()
            lr_mult = lr_multiplier(st.step, cfg, s.total_steps)
            set_lr(s.optimizers, lr_mult)
            loss_sum = torch.zeros((), device=d.device)
            stat_sums: dict[str, torch.Tensor] = {}  # extra per-step stats a loss_fn returns (DPO)
            for micro in range(s.accum):
                batch = s.data.batches.get(st.step, micro, s.accum, d.rank, d.world, d.device)
                last = micro == s.accum - 1
                with s.model.no_sync() if d.ddp and not last else contextlib.nullcontext():
                    with s.amp:
                        loss = s.data.loss_fn(s.model, batch)
                    if isinstance(loss, tuple):
                        loss, stats = loss
                        for k, v in stats.items():
                            stat_sums[k] = stat_sums.get(k, 0.0) + v.detach().float()
                    (loss / s.accum).backward()
                loss_sum += loss.detach().float()
            grad_norm = (torch.nn.utils.clip_grad_norm_(s.raw_model.parameters(), cfg.grad_clip)
                         if cfg.grad_clip > 0 else None)
            for opt in s.optimizers:
                opt.step()
            for opt in s.optimizers:
                opt.zero_grad(set_to_none=True)
            st.step += 1
            st.tokens += s.tokens_per_step
            train_loss = d.all_sum((loss_sum / s.accum).reshape(1)).item() / d.world
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"step {st.step}: training loss is {train_loss}; lower the lr?")
            dt = time.time() - t0
            step_times.append(dt)
            st.train_time_s += dt
            tok_s = s.tokens_per_step / dt
            mfu = s.flops_per_token * tok_s / d.world / s.peak if s.peak else None
            why = "" if mfu is None or mfu_explained else mfu_caveat(mfu, device_peak(d.device, peak_dtype))
            if why:  # once a run: an implausible MFU is never printed without its reason
                log.info(why)
                mfu_explained = True

            # -- evaluate, log, save
            st.time_s = time_offset + time.time() - t_start
            record = {"step": st.step, "tokens": st.tokens, "train_loss": train_loss, "lr": cfg.lr * lr_mult,
                      "grad_norm": None if grad_norm is None else grad_norm.item(), "tokens_per_s": tok_s,
                      "mfu": mfu, "time_s": st.time_s, "train_time_s": st.train_time_s}
            for k, v in stat_sums.items():
                record[f"train_{k}"] = d.all_sum((v / s.accum).reshape(1)).item() / d.world
            if st.step % cfg.eval_interval == 0:
                record.update(_evaluate(s, log))
            metrics.write(record)
            log.step(record)
            if st.step % (cfg.ckpt_interval or cfg.eval_interval) == 0:
                last_ckpt, saved_at = s.save(), st.step

        # -- the end: evaluate and save what has not been
        if st.val_step != st.step:
            st.time_s = time_offset + time.time() - t_start
            metrics.write({"step": st.step, "tokens": st.tokens, **_evaluate(s, log), "time_s": st.time_s,
                           "train_time_s": st.train_time_s})
        if saved_at != st.step:
            st.time_s = time_offset + time.time() - t_start
            last_ckpt = s.save()
    metrics.close()
    elapsed = time.time() - t_start
    log.close()
    log.info(f"stopped by {stopped_by} at step {st.step} ({st.tokens:,} tokens, {elapsed:.1f}s); "
             f"val loss {st.val_loss:.4f}; checkpoint {last_ckpt}")
    return {"run_dir": str(s.run_dir), "checkpoint": str(last_ckpt) if last_ckpt else None, "step": st.step,
            "tokens": st.tokens, "train_loss": train_loss, "val_loss": st.val_loss, "val_bpb": st.val_bpb,
            "best_val_loss": st.best_val_loss, "stopped_by": stopped_by, "time_s": elapsed,
            "train_time_s": st.train_time_s, "step_times_s": step_times, "tokens_per_s": tok_s, "mfu": mfu,
            "num_params": st.num_params, "peak_flops": s.peak}


def _evaluate(s, log: Logger) -> dict:
    """Val loss and bpb now, printed, as a metrics-record fragment."""
    log.evaluating(s.data.eval_tokens)
    res = s.evaluate()
    if "val_bpb" in res:
        log.info(f"step {s.state.step}: val loss {res['val_loss']:.4f} nats/token, "
                 f"{res['val_bpb']:.4f} bits/byte")
    else:
        log.info(f"step {s.state.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
    return res


def resume_config(run_dir: str | os.PathLike, *overrides: dict, where: str = "--resume") -> TrainConfig:
    """The config saved in ``run_dir``'s latest checkpoint, with ``overrides`` applied in order
    (budgets, intervals, device, ...); ``out`` is set to ``run_dir``.

    Raises:
        UserError: no/corrupt checkpoint, or an override that changes a model-shape key (arch,
            preset, depth, model, block_size) from the checkpoint's value.
    """
    ck = ckpt.find_checkpoint(run_dir, "latest")
    saved = make_config(ckpt.read_trainer_state(ck).config, where=str(ck / "trainer.json"))
    cfg = make_config(saved.to_dict(), *overrides, {"out": str(run_dir)}, where=where)
    for k in FIXED_ON_RESUME:
        if getattr(cfg, k) != getattr(saved, k):
            raise UserError(f"--resume: {k} cannot change in a resumed run (checkpoint {ck} has "
                            f"{k} = {getattr(saved, k)!r}, not {getattr(cfg, k)!r})")
    return cfg
