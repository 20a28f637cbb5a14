"""The training loop: ``train(cfg) -> summary``.

One optimizer step = ``accum`` micro steps of B x T tokens on each of ``world`` devices, so
``tokens_per_step = B * T * accum * world``. The loss is the mean cross-entropy in nats per
token; gradients are averaged over micro steps (loss / accum) and, under DDP, over ranks.
Run under ``torchrun`` it uses PyTorch DDP (NCCL on CUDA, gloo on CPU), or with ``parallel =
"fsdp"`` FSDP2 (parameters, gradients and optimizer state sharded; session.shard); rank 0 logs and
saves, checkpoints hold the full state either way.

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
warmdown begins, from the mean time of the latest steps (``optim.replan``), so that the schedule,
warmdown included, fills that many seconds of optimizer steps; ``max_steps`` is only the first plan.

Stopping: ``max_steps`` / ``max_tokens`` / ``max_time`` or SIGINT/SIGTERM all finish the current
step, evaluate, save a checkpoint and return normally. A second Ctrl-C kills at once; the last
complete checkpoint stays intact (see gptforge/checkpoint.py).
"""

from __future__ import annotations

import math
import os
import time

import torch

from gptforge import checkpoint as ckpt
from gptforge.errors import UserError
from gptforge.io import write_json
from gptforge.train.batches import batch_index
from gptforge.train.config import (
    FIXED_ON_RESUME,
    TrainConfig,
    check_saved_data,
    format_config,
    from_saved,
    make_config,
    saved_config,
)
from gptforge.train.log import Logger, MetricsFile
from gptforge.train.mfu import describe_peak, device_peak, mfu_caveat
from gptforge.train.optim import budget_steps, lr_multiplier, replan, set_lr
from gptforge.train.session import Dist, StopSignal, TrainData, setup
from gptforge.train.step import optimizer_step


def train(cfg: TrainConfig, resume: bool = False, logger: Logger | None = None,
          data: TrainData | None = None, started: float | None = None) -> dict:
    """Train as ``cfg`` says; return a summary dict.

    With ``resume=True``, continue the run in ``cfg.out`` from its latest checkpoint (weights,
    optimizer state, step, RNG states, data position), so the losses continue exactly as if the
    run had never stopped (bit for bit on CPU with the same world size and settings).
    ``logger``: where progress goes (default ``Logger(cfg.progress, cfg.log_interval)``;
    ``Logger("none")`` is silent). ``data``: what to train on (default: the pretraining shards in
    ``cfg.data``; SFT passes conversations, see gptforge.chat.sft). ``started``: the wall-clock time
    (``time.time()``) that ``max_time`` counts from (default: after setup, when the loop begins;
    the speedrun passes when its calibration began, so the probe counts). A step that would end
    past ``max_time``, judged by the last step's time (from the second on), is not begun.

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
            return _loop(s, log, resume, started)
        finally:
            log.close()
            if s.lock is not None:
                s.lock.close()
    finally:
        d.close()


def _loop(s, log: Logger, resume: bool, started: float | None) -> dict:
    cfg, d, st = s.cfg, s.d, s.state
    metrics = MetricsFile(s.run_dir, st.step if resume else None, enabled=d.main)
    if d.main and not resume:
        write_json(s.run_dir / "config.json", saved_config(cfg, s.run_dir))
    log.info(_banner(s, resume))
    t_start, time_offset = time.time(), st.time_s
    started = t_start if started is None else started
    last_ckpt, saved_at = st.path, st.step if resume else None
    step_times, record, mfu_explained = [], {}, False
    peak = device_peak(d.device, s.peak_dtype) if d.main else None  # the banner's (cached); MFU is rank 0's
    budget = s.total_steps if cfg.schedule_time else budget_steps(cfg, s.tokens_per_step)  # the log's total
    log.start(budget, st.step, cfg.max_time)
    with StopSignal() as stop:
        if not resume:  # the curve starts at the untrained model
            metrics.write(_eval_record(s, log))
        while not (stopped_by := _stop_reason(s, log, stop, step_times, started)):
            t0 = time.time()
            lr_mult = lr_multiplier(st.step, cfg, s.total_steps)
            set_lr(s.optimizers, lr_mult)
            out = optimizer_step(s.model, s.optimizers, lambda i: s.data.batches.get(
                batch_index(st.step, i, s.accum, d.rank, d.world), d.device), s.accum, s.data.loss_fn,
                s.amp, d.ddp and not s.sharded, cfg.grad_clip)
            st.step += 1
            st.tokens += s.tokens_per_step
            train_loss = _rank_mean(d, out.loss)  # waits for the step: its time ends here
            step_times.append(time.time() - t0)
            st.train_time_s += step_times[-1]
            st.time_s = time_offset + time.time() - t_start
            record = _step_record(s, out, train_loss, cfg.lr * lr_mult, step_times[-1])
            why = "" if mfu_explained else mfu_caveat(record["mfu"], peak)
            if why:  # once a run: an implausible MFU is never printed without its reason
                log.info(why)
                mfu_explained = True
            if st.step % cfg.eval_interval == 0:
                record.update(_evaluate(s, log))
            metrics.write(record)
            log.step(record)
            if st.step % (cfg.ckpt_interval or cfg.eval_interval) == 0:
                last_ckpt, saved_at = s.save(), st.step
        st.time_s = time_offset + time.time() - t_start
        if st.val_step != st.step:  # the end: evaluate and save what has not been
            metrics.write(_eval_record(s, log))
        if saved_at != st.step:
            st.time_s = time_offset + time.time() - t_start
            last_ckpt = s.save()
    metrics.close()
    elapsed = time.time() - t_start
    log.close()
    log.info(f"stopped by {stopped_by} at step {st.step} ({st.tokens:,} tokens, {elapsed:.1f}s); "
             f"val loss {st.val_loss:.4f}; checkpoint {last_ckpt}")
    return {"run_dir": str(s.run_dir), "checkpoint": str(last_ckpt) if last_ckpt else None, "step": st.step,
            "tokens": st.tokens, "train_loss": record.get("train_loss"), "val_loss": st.val_loss,
            "val_bpb": st.val_bpb, "best_val_loss": st.best_val_loss, "stopped_by": stopped_by,
            "time_s": elapsed, "train_time_s": st.train_time_s, "step_times_s": step_times,
            "tokens_per_s": record.get("tokens_per_s", 0.0), "mfu": record.get("mfu"),
            "num_params": st.num_params, "peak_flops": s.peak}


def _step_record(s, out, train_loss: float, lr: float, dt: float) -> dict:
    """The metrics record of the step just taken (``dt`` seconds long; ``out`` its StepResult).

    Raises:
        FloatingPointError: the training loss is not finite.
    """
    st = s.state
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"step {st.step}: training loss is {train_loss}; lower the lr?")
    tok_s = s.tokens_per_step / dt
    return {"step": st.step, "tokens": st.tokens, "train_loss": train_loss, "lr": lr,
            "grad_norm": None if out.grad_norm is None else out.grad_norm.item(), "tokens_per_s": tok_s,
            "mfu": s.flops_per_token * tok_s / s.d.world / s.peak if s.peak else None,
            "time_s": st.time_s, "train_time_s": st.train_time_s,
            **{f"train_{k}": _rank_mean(s.d, v) for k, v in out.stats.items()}}


def _eval_record(s, log: Logger) -> dict:
    """The metrics record of an evaluation between steps."""
    st = s.state
    return {"step": st.step, "tokens": st.tokens, **_evaluate(s, log), "time_s": st.time_s,
            "train_time_s": st.train_time_s}


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


def _banner(s, resume: bool) -> str:
    cfg, d = s.cfg, s.d
    lora = (f", {sum(p.numel() for p in s.raw_model.parameters() if p.requires_grad):,} of them trained: "
            f"LoRA {cfg.lora}" if cfg.lora else "")
    # a time-bound run (RL's, whose step budget is only a ceiling) gives its seconds, not a step count
    # it will never reach
    horizon = (f"until {cfg.max_time:g} s have passed" if cfg.max_time and s.total_steps >= 10**6
               else f"{s.total_steps} steps in the schedule")
    return (f"{'resuming' if resume else 'training'} {cfg.arch} ({s.state.num_params:,} parameters{lora}, "
            f"{s.flops_per_token:,} FLOPs/token) in {s.run_dir}\n{format_config(cfg)}\n"
            f"  -> {d.world} process(es) on {d.device.type}, {s.dtype}, B={cfg.batch_size} "
            f"T={cfg.block_size} accum={s.accum}: {s.tokens_per_step:,} tokens/step, {horizon}; "
            f"{s.data.train_tokens:,} train / {s.data.eval_tokens:,} "
            f"eval tokens" + (f"\n  {describe_peak(d.device, s.peak_dtype)}" if d.main else ""))


def _rank_mean(d, t: torch.Tensor) -> float:
    """The mean over DDP ranks of a 0-dim tensor every rank holds."""
    return d.all_sum(t.reshape(1)).item() / d.world


def _stop_reason(s, log: Logger, stop: StopSignal, step_times: list[float], started: float) -> str | None:
    """Why the run stops before its next step (max_steps, max_tokens, max_time, signal), or None;
    with ``schedule_time`` it first re-plans ``s.total_steps``. All ranks agree: rank 0's clock
    decides max_time (counted from ``started``; no step begins that the last one's time says would
    end past it, from the session's second step on) and the plan."""
    cfg, d, st = s.cfg, s.d, s.state
    # the session's first step is no forecast: it holds one-off costs (torch.compile took 33 s of a
    # GPU run's first step, bench/README.md "GPU"), which would stop an 89 s budget after one step
    next_s = step_times[-1] if len(step_times) > 1 else 0.0
    time_up = d.main and cfg.max_time > 0 and time.time() - started + next_s >= cfg.max_time
    planned = replan(cfg, st.step, s.total_steps, st.train_time_s, step_times) if d.main else 0
    flags = d.all_sum(torch.tensor([float(stop.received is not None), float(time_up), float(planned)],
                                   dtype=torch.float64))
    if int(flags[2]) != s.total_steps:
        s.total_steps = st.schedule_steps = int(flags[2])
        log.replan(s.total_steps)
    return ("max_steps" if st.step >= (s.total_steps if cfg.schedule_time else cfg.max_steps) else
            "max_tokens" if cfg.max_tokens and st.tokens >= cfg.max_tokens else
            "max_time" if flags[1] > 0 else "signal" if flags[0] > 0 else None)


def resume_config(run_dir: str | os.PathLike, *overrides: dict, where: str = "--resume") -> TrainConfig:
    """The config saved in ``run_dir``'s latest checkpoint, with ``overrides`` applied in order
    (budgets, intervals, device, ...); ``out`` is set to ``run_dir``.

    Raises:
        UserError: no/corrupt checkpoint, or an override that changes a model-shape key (arch,
            preset, depth, model, block_size) from the checkpoint's value.
    """
    ck = ckpt.find_checkpoint(run_dir, "latest")
    saved = make_config(from_saved(ckpt.read_trainer_state(ck).config, ck.parent.parent),
                        where=str(ck / "trainer.json"))
    cfg = make_config(saved.to_dict(), *overrides, {"out": str(run_dir)}, where=where)
    check_saved_data(cfg, saved.data, run_dir)
    for k in FIXED_ON_RESUME:
        if getattr(cfg, k) != getattr(saved, k):
            raise UserError(f"--resume: {k} cannot change in a resumed run (checkpoint {ck} has "
                            f"{k} = {getattr(saved, k)!r}, not {getattr(cfg, k)!r})")
    return cfg
