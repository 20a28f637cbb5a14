"""What a training run shows and records: progress on the console, one JSON record per step on disk.

``Logger`` (rank 0 only) prints, by ``mode``:

- ``bar``: a tqdm progress bar on stderr (step, loss, tokens/s, MFU, ETA), redrawn every step;
- ``log``: plain lines on stdout, at the first step, then at least every ``interval`` seconds
  (step, loss, lr, tokens/s, MFU, elapsed, ETA), and every evaluation;
- ``none``: nothing at all (``train(..., logger=Logger("none"))`` for library callers);
- ``auto``: ``bar`` when stderr is a terminal, else ``log``.

``MetricsFile`` appends the step records to ``RUN_DIR/metrics.jsonl`` (see loop.py for the keys).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from gptforge.io import atomic_write


def _fmt_s(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Logger:
    """Console progress of a run. ``mode``: auto | bar | log | none; ``interval``: seconds between
    log lines in ``log`` mode."""

    def __init__(self, mode: str = "auto", interval: float = 10.0):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.interval = interval
        self.bar = None
        self._last_line = 0.0

    def info(self, msg: str) -> None:
        """A line of text (config, evaluation results, the final summary)."""
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def start(self, total_steps: int, step: int, max_time: float = 0.0) -> None:
        """Training begins at ``step`` of ``total_steps`` (the budget); ``max_time`` > 0: a wall-clock
        budget in seconds from now too, which the ETA follows when it ends first."""
        self._t0, self._step0, self._total, self._max_time = time.time(), step, total_steps, max_time
        self._last_line = self._t0
        if self.mode == "bar":
            # a terminal that reports its size as 0 x 0 (a fresh pty: `script`, CI runners, some IDEs)
            # made tqdm draw nothing at all for the whole run; assume 100 x 24 there
            try:
                size = os.get_terminal_size(sys.stderr.fileno())
            except (OSError, ValueError):
                size = os.terminal_size((0, 0))
            known = size.columns > 0 and size.lines > 0
            width = {"dynamic_ncols": True} if known else {"ncols": 100, "nrows": 24}
            self.bar = tqdm(total=total_steps, initial=step, unit="step", miniters=1, mininterval=0.2,
                            file=sys.stderr, **width)

    def replan(self, total_steps: int) -> None:
        """The step budget moved (a ``schedule_time`` run re-planned it)."""
        self._total = total_steps
        if self.bar is not None:
            self.bar.total = total_steps
            self.bar.refresh()

    def eta(self, step: int) -> float:
        """Seconds left at this session's average pace (evaluations included), or of the time budget
        when that ends first."""
        done = step - self._step0
        by_steps = (time.time() - self._t0) / done * max(0, self._total - step) if done else float("nan")
        return min(by_steps, self._time_left()) if self._time_bound(step) else by_steps

    def _time_left(self) -> float:
        return max(0.0, self._max_time - (time.time() - self._t0))

    def _time_bound(self, step: int) -> bool:
        """The time budget ends before the step budget would, at the present pace."""
        done = step - self._step0
        return self._max_time > 0 and done > 0 and \
            self._time_left() < (time.time() - self._t0) / done * max(0, self._total - step)

    def step(self, r: dict) -> None:
        """After each optimizer step, with its metrics record."""
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        bound = self._time_bound(r["step"])
        if self.mode == "bar":
            if bound and self.bar.total is not None:  # a time-bound run: count steps, with no total
                self.bar.total = None
            self.bar.update(r["step"] - self.bar.n)
            self.bar.set_postfix_str(f"loss {r['train_loss']:.4f}, {r['tokens_per_s']:,.0f} tok/s, MFU {mfu}")
        elif self.mode == "log":
            now = time.time()
            if (now - self._last_line >= self.interval or r["step"] == self._step0 + 1
                    or r["step"] == self._total):
                self._last_line = now
                total = " (time-bound)" if bound else f"/{self._total}"
                print(f"step {r['step']}{total} | loss {r['train_loss']:.4f} | lr {r['lr']:.2e} | "
                      f"{r['tokens_per_s']:,.0f} tok/s | MFU {mfu} | {_fmt_s(r['time_s'])} elapsed | "
                      f"ETA {_fmt_s(self.eta(r['step'])) if r['step'] > self._step0 else '-'}", flush=True)

    def evaluating(self, n_tokens: int) -> None:
        """An evaluation is starting (a full-split one can take a while: say so)."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"evaluating on {n_tokens:,} tokens...")
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsFile:
    """``RUN_DIR/metrics.jsonl``, one JSON object per line, flushed per record (rank 0 only)."""

    def __init__(self, run_dir: Path, resume_step: int | None, enabled: bool = True):
        self.f = None
        if not enabled:
            return
        path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            _truncate(path, resume_step)
        else:
            path.unlink(missing_ok=True)
        self.f = open(path, "a")

    def write(self, record: dict) -> None:
        if self.f is not None:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def _truncate(path: Path, last_step: int) -> None:
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
    atomic_write(path, "".join(line + "\n" for line in keep))
