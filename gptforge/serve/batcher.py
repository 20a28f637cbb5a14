"""The batcher: one background thread per served model decodes every live request of that model
together, and hands each request its text as it comes.

    batcher = Batcher(model, tok, max_batch=32, max_queue=64)
    job = Job(prompt=ids, rows=[RowParams(max_new=64, temperature=0)], chat=True, send=callback)
    batcher.submit(job)          # raises QueueFull when the queue is full (the server answers 429)
    ...                          # callback(events) is called from the batcher's thread after each step
    job.cancelled = True         # e.g. the client disconnected: its rows stop at the next step

**Continuous batching** (iteration-level scheduling: Yu et al. 2022, Orca; vLLM). The thread loops:
admit waiting requests while there is room (at most ``max_batch`` live rows): each prompt is
prefilled in one forward pass and its first token sampled at once; then one decode step feeds every
live row its last token as one batch (``gptforge.engine.Slots``: a KV cache whose rows have their own
positions); rows that finished, hit a stop or were cancelled leave at once, and their room goes to the
next request in the queue. So a request never waits for a running batch to end, only for a free row
(and for prefills of requests admitted with it, which run between decode steps). Requests beyond
``max_batch`` wait in a bounded queue (``max_queue`` rows; beyond it ``submit`` raises ``QueueFull``).

Every row is the engine's ``Row`` (its own sampler, seed, tool calls, stop tokens and max tokens, as
in ``generate``), with its own stop strings and its own incremental UTF-8 decoding
(``TurnDecoder``), so a multi-byte character is never split across events. A failure in one row's
prefill, sampling, tool call or decoding ends that row (its client gets a server error); the others
go on. Only a failed decode step (the batch's forward pass) ends every live row.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from gptforge.engine import Row, Slots, ToolUse, prepare


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


class Inbox:
    """Hands items (a job's events) from a batcher's thread to the coroutine answering the request.

    ``put`` (any thread) stores items; ``get`` (on the event loop) returns everything stored so far,
    first waiting while there is nothing; ``settle(seconds)`` waits that long, or less when an
    ``urgent`` put (a row's end) comes. A stream that settles between writes collects several decode
    steps for each write: every wake-up of the event loop costs a self-pipe read and a hand-over of
    the GIL between the two threads, a real share of a small model's decode step on 2 cores
    (bench/README.md, serve.py); ``put`` wakes the loop only when the coroutine waits for it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock = loop, threading.Lock()
        self.items: list = []
        self.urgent = False  # an urgent put since the last take
        self.waiter: asyncio.Future | None = None  # the waiting coroutine's, woken by ...
        self.wake_on = "any"  # ... any put, or "urgent" ones only

    def put(self, items: list, urgent: bool = False) -> None:
        with self.lock:
            self.items.extend(items)
            self.urgent = self.urgent or urgent
            if self.waiter is None or (self.wake_on == "urgent" and not urgent):
                return
            waiter, self.waiter = self.waiter, None
        with contextlib.suppress(RuntimeError):  # the event loop is gone (server shutting down)
            self.loop.call_soon_threadsafe(_wake, waiter)

    def take(self) -> list:
        """Everything stored so far (maybe nothing), without waiting."""
        with self.lock:
            items, self.items, self.urgent = self.items, [], False
        return items

    async def get(self) -> list:
        await self._wait("any", None)
        return self.take()

    async def settle(self, seconds: float) -> None:
        await self._wait("urgent", seconds)

    async def _wait(self, wake_on: str, timeout: float | None) -> None:
        with self.lock:
            if self.urgent or (wake_on == "any" and self.items):
                return
            waiter = self.waiter = self.loop.create_future()
            self.wake_on = wake_on
        timer = self.loop.call_later(timeout, _wake, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            with self.lock:
                if self.waiter is waiter:
                    self.waiter = None


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(buf) + 1))
                    if buf.endswith(s[:k])), default=0)
        self.held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


@dataclass
class _Row:
    job: Job
    index: int
    decoder: TurnDecoder
    stops: StopStrings
    row: Row  # the engine's decoder of this row: sampler, tool calls, stop tokens, tokens so far
    done: bool = False
    next: int = -1  # the token to feed at the next step
    events: list[Event] = field(default_factory=list)

    def say(self, pieces: list[Piece]) -> None:
        """Queue the events for ``pieces`` (text through the stop-string filter; tool parts whole)."""
        for p in pieces:
            if self.stops.hit:
                return
            # text goes through the filter; before a tool call or its output, the text it held back
            text = self.stops.feed(p.text) if p.kind == "text" else self.stops.flush()
            if text:
                self.events.append(Event(self.index, text))
            if p.kind != "text":
                self.events.append(Event(self.index, marker(p), part={"type": p.kind, "text": p.text}))

    def end(self, reason: str) -> None:
        self.done = True
        self.say(self.decoder.finish())
        tail = "" if self.stops.hit else self.stops.flush()
        self.events.append(Event(self.index, tail, finish="stop" if self.stops.hit else reason,
                                 tokens=len(self.row.tokens)))


def marker(p: Piece) -> str:
    """How a tool call shows in the reply's text: ``<<expr=`` then ``result>>`` (GSM8K's calculator
    annotation, ``<<48/2=24>>``), so a client that only reads ``content`` still sees it."""
    return f"<<{p.text}=" if p.kind == "tool_call" else f"{p.text}>>"


class Batcher:
    """Owns one model: a daemon thread runs continuous batching over its requests (module docstring).

    Attributes (read from any thread, for /health and tests): ``running`` rows decoding now,
    ``waiting`` rows in the queue, ``cancelled`` and ``finished`` rows so far, ``steps`` decode
    steps run so far, ``max_rows``: the most rows one step has decoded together.
    """

    def __init__(self, model: torch.nn.Module, tok, max_batch: int = 32, max_queue: int = 64):
        self.model, self.tok = model, tok
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device = next(model.parameters()).device
        try:
            self.chat_tokens: ChatTokens | None = ChatTokens(tok)
            self.tool: ToolUse | None = ToolUse.from_tokenizer(tok)
        except ValueError:  # a base tokenizer: plain completions only
            self.chat_tokens, self.tool = None, None
        self.eot = tok.special_tokens.get("<|endoftext|>")
        self.end_turn = self.chat_tokens.assistant_end if self.chat_tokens else None
        self.queue: deque[Job] = deque()
        self.cond = threading.Condition()
        self.running = self.waiting = self.cancelled = self.finished = self.steps = self.max_rows = 0
        self.stopping = False
        self.slots = Slots(model, max_batch)
        self.live: list[_Row] = []  # live[i] is row i of self.slots
        self.thread = threading.Thread(target=self._loop, name="gptforge-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``.

        Raises:
            QueueFull: that would put more than ``max_queue`` rows in the queue.
            ValueError: the job has more rows than ``max_batch`` (it could never run).
        """
        if len(job.rows) > self.max_batch:
            raise ValueError(f"{len(job.rows)} choices; this model decodes at most {self.max_batch} rows")
        with self.cond:
            if self.waiting + len(job.rows) > self.max_queue:
                raise QueueFull(f"the queue holds {self.waiting} request rows (at most {self.max_queue})")
            self.queue.append(job)
            self.waiting += len(job.rows)
            self.cond.notify()

    def stop(self) -> None:
        """Let the thread end after its current step."""
        with self.cond:
            self.stopping = True
            self.cond.notify()

    def stats(self) -> dict:
        return {k: getattr(self, k) for k in ("running", "waiting", "cancelled", "finished", "steps",
                                              "max_rows")}

    def _loop(self) -> None:
        while not self.stopping:
            try:
                self._admit()
                if self.live:
                    self._step()
            except Exception:  # a bug: tell the clients of live rows (the server answers 500), keep serving
                traceback.print_exc(file=sys.stderr)
                for r in self.live:
                    if not r.done:
                        r.job.send([Event(r.index, finish="error")])
                self.live, self.slots = [], Slots(self.model, self.max_batch)
            self.running = len(self.live)
            # hand the GIL over between steps: with a small model the decoding threads would otherwise
            # keep the event loop waiting (up to Python's 5 ms switch interval per handover), and a
            # client that hangs up would only be noticed after its generation had run to the end
            time.sleep(0)

    def _admit(self) -> None:
        """Wait while there is nothing to do; then start queued jobs (skipping cancelled ones) while
        their rows fit beside the live ones, in arrival order."""
        jobs = []
        with self.cond:
            while not self.queue and not self.live and not self.stopping:
                self.cond.wait()
            free = self.max_batch - len(self.live)
            while self.queue and len(self.queue[0].rows) <= free:
                job = self.queue.popleft()
                self.waiting -= len(job.rows)
                if job.cancelled:
                    self.cancelled += len(job.rows)
                    continue
                jobs.append(job)
                free -= len(job.rows)
        for job in jobs:  # prefill: the prompt once, its first token for each of the job's rows
            try:
                logits = self.slots.add(job.prompt, len(job.rows))  # (n, V)
            except Exception:  # this prompt's failure (the slots are unchanged): its rows end alone
                traceback.print_exc(file=sys.stderr)
                job.send([Event(i, finish="error") for i in range(len(job.rows))])
                continue
            rows = [self._new_row(job, i, p) for i, p in enumerate(job.rows)]
            self.live.extend(rows)
            self.running = len(self.live)
            self._choose(rows, logits, len(self.live) - len(rows))
        if jobs:
            self._leave()

    def _step(self) -> None:
        """One decode step of every live row, then the finished and cancelled rows leave."""
        for r in self.live:
            if r.job.cancelled and not r.done:
                r.done = True  # its client is gone: no last event
                self.cancelled += 1
        self._leave()
        if not self.live:
            return
        logits = self.slots.step([r.next for r in self.live])  # (n, V)
        self.steps += 1
        self.max_rows = max(self.max_rows, len(self.live))
        self._choose(self.live, logits, 0)
        self._leave()

    def _new_row(self, job: Job, index: int, params: RowParams) -> _Row:
        seed = params.seed + index if params.seed is not None else random.getrandbits(63)
        # a chat turn ends at <|assistant_end|> or <|endoftext|>, plain text at <|endoftext|> (not sent)
        stops = [t for t in ((self.end_turn, self.eot) if job.chat else (self.eot,)) if t is not None]
        row = Row(params.max_new, params.temperature, params.top_k, params.top_p, seed, stops,
                  self.tool if job.chat else None, device=self.device)
        return _Row(job, index, TurnDecoder(self.tok, tools=job.chat), StopStrings(params.stop), row)

    def _choose(self, rows: list[_Row], logits: torch.Tensor, first: int) -> None:
        """Pick each row's next token (rows[i] has logits[i] and is slot first + i; ``Row.choose``),
        then stream it or end the row."""
        logits, greedy = prepare([r.row for r in rows], logits)
        for i, r in enumerate(rows):
            try:
                tok = r.row.choose(logits[i], greedy[i])  # None: a stop token
                if tok is not None:
                    r.say(r.decoder.feed(tok))
                if tok is None or r.stops.hit:
                    r.end("stop")
                elif r.row.done or self.slots.length(first + i) >= self.slots.block_size:
                    r.end("length")  # (the server keeps prompt + max_tokens within the context)
                else:
                    r.next = tok
            except Exception:  # a bug in this row's sampling, tool call or decoding: it ends alone
                traceback.print_exc(file=sys.stderr)
                r.done = True
                r.events.append(Event(r.index, finish="error"))

    def _leave(self) -> None:
        """Send this step's events, then drop the rows that are done from the slots."""
        by_job: dict[int, tuple[Job, list[Event]]] = {}
        for r in self.live:
            if r.events:
                by_job.setdefault(id(r.job), (r.job, []))[1].extend(r.events)
                self.finished += sum(e.finish is not None for e in r.events)
                r.events = []
        for job, events in by_job.values():
            job.send(events)
        for i in range(len(self.live) - 1, -1, -1):
            if self.live[i].done:
                self.slots.remove(i, self.live)
        self.running = len(self.live)
