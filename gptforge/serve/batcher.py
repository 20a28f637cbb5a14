"""The batcher: one background thread per served model runs the decoding steps of every live request
of that model as one batch, and hands each request its text as it comes.

    batcher = Batcher(model, tok, max_batch=32, max_queue=64)
    job = Job(prompt=ids, rows=[RowParams(max_new=64, temperature=0)], chat=True, send=callback)
    batcher.submit(job)          # raises QueueFull when the queue is full (the server answers 429)
    ...                          # callback(events) is called from the batcher's thread after each step
    job.cancelled = True         # e.g. the client disconnected: its rows stop at the next step

**Static batches, not continuous batching.** The GPT's KV cache has one position for the whole batch
(``gptforge.models.gpt.KVCache.pos``), so a request cannot join a batch whose rows are already past
their prompts. The thread therefore takes every waiting request (up to ``max_batch`` rows, after
waiting ``window`` seconds for more to arrive), runs them together until all of them have finished
or been cancelled, then takes the next batch. Requests that arrive meanwhile wait in a bounded queue
(``max_queue`` rows; beyond it ``submit`` raises ``QueueFull``). A long request therefore delays the
requests that arrive after its batch started (head-of-line blocking): that is the price of the single
cache position; per-row positions in the cache would lift it (future work).

Within a batch every row has its own sampling settings (temperature, top-k, top-p, seed, stop
strings, max tokens), its own tool calls (the engine's per-row ``ToolCalls``) and its own
incremental UTF-8 decoding (``TurnDecoder``), so a multi-byte character is never split across
events. As in ``gptforge.engine.generate_stream``, all rows start at position 0 and a row still
inside its prompt is fed its prompt token (the KV cache is filled once for the shortest prompt).
"""

from __future__ import annotations

import codecs
import random
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gptforge.chat.assistant import Piece, TurnDecoder
from gptforge.chat.render import ChatTokens
from gptforge.engine import DecodeContext, ToolCalls, ToolUse, sample_next


class QueueFull(Exception):
    """The batcher's queue holds ``max_queue`` rows already; try again later."""


@dataclass
class RowParams:
    """Sampling settings of one choice (row): ranges are checked by the server before it gets here.

    Attributes:
        max_new: tokens to generate at most (tool answers count).
        temperature: 0 is greedy. top_k: None keeps all. top_p: nucleus mass in (0, 1].
        seed: seed of the row's own torch.Generator (None: a random one).
        stop: strings that end the row; the text from the stop string on is not sent.
    """

    max_new: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Event:
    """What a row produced in one step: ``text`` (may be "") and, for a tool call or its output, ``part``
    ``{"type": "tool_call" | "tool_output", "text": ...}``; ``finish`` is "stop", "length" or "error"
    on the row's last event, with ``tokens``, the row's completion tokens."""

    index: int
    text: str = ""
    part: dict | None = None
    finish: str | None = None
    tokens: int = 0


@dataclass
class Job:
    """One request: a prompt and one RowParams per choice (OpenAI's ``n``).

    ``chat``: the prompt asks for an assistant turn (stop at ``<|assistant_end|>`` or
    ``<|endoftext|>``, run tool calls, report them as parts); else plain text until ``<|endoftext|>``.
    ``send(events)`` is called from the batcher's thread after each step with the step's events of this
    job; it must be quick and must not raise. Set ``cancelled`` (from any thread) to stop its rows.
    """

    prompt: list[int]
    rows: list[RowParams]
    chat: bool
    send: Callable[[list[Event]], None]
    cancelled: bool = False


class _TextDecoder:
    """Token ids -> text pieces for plain completions (incremental UTF-8, like TurnDecoder)."""

    def __init__(self, tok):
        self.tok = tok
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, i: int) -> list[Piece]:
        text = self.dec.decode(self.tok.decode_bytes([i]))
        return [Piece("text", text)] if text else []

    def finish(self) -> list[Piece]:
        tail = self.dec.decode(b"", final=True)
        return [Piece("text", tail)] if tail else []


class StopStrings:
    """Finds stop strings in streamed text. ``feed(text)`` returns the text that is safe to send: text
    that might be the start of a stop string is held back until the next piece decides. After a stop
    string is found, ``hit`` is True and the text from it on is dropped."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.held, self.hit = stops, "", False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        buf = self.held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit, self.held = True, ""
            return buf[:cut]
        # hold the longest tail of buf that is a proper prefix of some stop string
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self.held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


@dataclass
class _Row:
    job: Job
    index: int
    params: RowParams
    decoder: TurnDecoder | _TextDecoder
    stops: StopStrings
    gen: torch.Generator
    produced: int = 0
    done: bool = False
    events: list[Event] = field(default_factory=list)

    def say(self, pieces: list[Piece]) -> None:
        """Queue the events for ``pieces`` (text through the stop-string filter; tool parts whole)."""
        for p in pieces:
            if self.stops.hit:
                return
            if p.kind == "text":
                text = self.stops.feed(p.text)
                if text:
                    self.events.append(Event(self.index, text))
            else:  # a tool call or its output: the held text goes first, then the part
                held = self.stops.flush()
                if held:
                    self.events.append(Event(self.index, held))
                self.events.append(Event(self.index, marker(p), part={"type": p.kind, "text": p.text}))

    def end(self, reason: str) -> None:
        self.done = True
        if reason != "cancelled":
            self.say(self.decoder.finish())
            tail = "" if self.stops.hit else self.stops.flush()
            self.events.append(Event(self.index, tail, finish="stop" if self.stops.hit else reason,
                                     tokens=self.produced))


def marker(p: Piece) -> str:
    """How a tool call shows in the reply's text: ``<<expr=`` then ``result>>`` (GSM8K's calculator
    annotation, ``<<48/2=24>>``), so a client that only reads ``content`` still sees it."""
    return f"<<{p.text}=" if p.kind == "tool_call" else f"{p.text}>>"


class Batcher:
    """Owns one model: a daemon thread runs its batches (see the module docstring).

    Attributes (read from any thread, for /health and tests): ``running`` rows in the current
    batch still generating, ``waiting`` rows in the queue, ``cancelled`` and ``finished`` rows so far,
    ``batches`` run so far, ``max_rows``: the largest batch so far.
    """

    def __init__(self, model: torch.nn.Module, tok, max_batch: int = 32, max_queue: int = 64,
                 window: float = 0.005):
        self.model, self.tok = model, tok
        self.max_batch, self.max_queue, self.window = max_batch, max_queue, window
        self.device = next(model.parameters()).device
        try:
            self.chat_tokens: ChatTokens | None = ChatTokens(tok)
            self.tool: ToolUse | None = ToolUse.from_tokenizer(tok)
        except ValueError:  # a base tokenizer: plain completions only
            self.chat_tokens, self.tool = None, None
        self.queue: deque[Job] = deque()
        self.cond = threading.Condition()
        self.running = self.waiting = self.cancelled = self.finished = self.batches = self.max_rows = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="gptforge-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``. Raises QueueFull when that would put more than ``max_queue`` rows in the queue."""
        with self.cond:
            if self.waiting + len(job.rows) > self.max_queue:
                raise QueueFull(f"the queue holds {self.waiting} request rows (at most {self.max_queue})")
            self.queue.append(job)
            self.waiting += len(job.rows)
            self.cond.notify()

    def stop(self) -> None:
        """Let the thread end after its current batch."""
        with self.cond:
            self.stopping = True
            self.cond.notify()

    def stats(self) -> dict:
        return {k: getattr(self, k) for k in ("running", "waiting", "cancelled", "finished", "batches",
                                              "max_rows")}

    def _take(self) -> list[Job]:
        """Wait for work, then take whole jobs (skipping cancelled ones) up to max_batch rows."""
        with self.cond:
            while not self.queue and not self.stopping:
                self.cond.wait()
        if self.window:  # let requests sent together land in one batch
            time.sleep(self.window)
        jobs, rows = [], 0
        with self.cond:
            while self.queue and (not jobs or rows + len(self.queue[0].rows) <= self.max_batch):
                job = self.queue.popleft()
                self.waiting -= len(job.rows)
                if job.cancelled:
                    self.cancelled += len(job.rows)
                    continue
                jobs.append(job)
                rows += len(job.rows)
        return jobs

    def _loop(self) -> None:
        while not self.stopping:
            jobs = self._take()
            if not jobs:
                continue
            try:
                self._run(jobs)
            except Exception:  # a bug: tell the clients (the server answers 500) and keep serving
                traceback.print_exc(file=sys.stderr)
                for job in jobs:
                    job.send([Event(i, finish="error") for i in range(len(job.rows))])
            finally:
                self.running = 0

    def _new_row(self, job: Job, index: int, params: RowParams) -> _Row:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(params.seed + index if params.seed is not None else random.getrandbits(63))
        decoder = TurnDecoder(self.tok) if job.chat else _TextDecoder(self.tok)
        return _Row(job, index, params, decoder, StopStrings(params.stop), gen)

    @torch.inference_mode()
    def _run(self, jobs: list[Job]) -> None:
        """Decode one batch to the end: the loop of ``generate_stream``, with per-row settings."""
        rows = [self._new_row(job, i, p) for job in jobs for i, p in enumerate(job.rows)]
        B = len(rows)
        self.batches += 1
        self.max_rows = max(self.max_rows, B)
        self.running = B
        lens = [len(r.job.prompt) for r in rows]
        total = max(n + r.params.max_new for n, r in zip(lens, rows, strict=True))
        seq = torch.zeros((B, total), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            seq[i, :lens[i]] = torch.tensor(r.job.prompt, dtype=torch.long)
        ctx = DecodeContext(self.model, B, use_cache=True)
        calls = ToolCalls(self.tool, B) if self.tool is not None else None
        eot = self.tok.special_tokens.get("<|endoftext|>")
        end_turn = self.chat_tokens.assistant_end if self.chat_tokens else None
        for t in range(min(lens), total):
            for r in rows:
                if r.job.cancelled and not r.done:
                    r.end("cancelled")
                    self.cancelled += 1
            live = sum(not r.done for r in rows)
            self.running = live
            if not live:
                break
            logits = ctx.logits(seq[:, :t])  # (B, V)
            greedy = logits.argmax(dim=-1).tolist()  # one call for all the temperature-0 rows
            nxt = seq[:, t].tolist()  # prompt tokens where rows are still reading their prompt
            for i, r in enumerate(rows):
                if t < lens[i] or r.done:
                    continue
                forced = calls.pop(i) if calls is not None and r.job.chat else None
                if forced is not None:
                    tok = forced
                elif r.params.temperature == 0:
                    tok = greedy[i]
                else:
                    tok = sample_next(logits[i:i + 1], r.params.temperature, r.params.top_k, r.params.top_p,
                                      r.gen).item()
                nxt[i] = tok
                if forced is None and tok in (end_turn, eot) and (r.job.chat or tok == eot):
                    r.end("stop")  # <|assistant_end|> or <|endoftext|> ends the turn (not sent)
                    continue
                r.produced += 1
                if forced is None and calls is not None and r.job.chat:
                    calls.observe(i, tok)
                r.say(r.decoder.feed(tok))
                if r.stops.hit:
                    r.end("stop")
                elif r.produced >= r.params.max_new:
                    r.end("length")
            seq[:, t] = torch.tensor(nxt, dtype=torch.long, device=self.device)
            self._dispatch(rows)
        for r in rows:
            if not r.done:
                r.end("length")
        self._dispatch(rows)

    def _dispatch(self, rows: list[_Row]) -> None:
        """Send each job its rows' new events (one call per job per step)."""
        by_job: dict[int, tuple[Job, list[Event]]] = {}
        for r in rows:
            if r.events:
                by_job.setdefault(id(r.job), (r.job, []))[1].extend(r.events)
                self.finished += sum(e.finish is not None for e in r.events)
                r.events = []
        for job, events in by_job.values():
            job.send(events)
