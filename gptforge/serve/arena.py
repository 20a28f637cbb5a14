"""The arena inside `gptforge serve`: blind battles between two of the served chat models, votes in a
`VoteStore`, and the leaderboard computed from them. ``create_app(..., arena_db=FILE)`` adds:

- ``GET /arena``: the battle page (``static/arena.html``); it also gives the browser its session
  cookie. With fewer than two chat models: a page saying so (400).
- ``POST /arena/battles`` ``{"prompt", "temperature", "max_tokens", "top_k", "top_p"}``: the
  server draws two different chat models at random, in random order (side A, side B), and both
  generate a reply to ``prompt`` with the same settings, concurrently (each model has its own
  batcher thread). Server-sent events, each ``data: {json}``: ``{"side": "a"|"b", "text": ...}``,
  ``{"side", "part": {"type": "tool_call"|"tool_output", "text"}}``, ``{"side", "finish":
  "stop"|"length"}``; once both replies are complete the battle is stored (prompt, replies,
  models, sides, settings, session) and ``{"battle_id": ...}`` is sent, then ``data: [DONE]``.
  The model names are never sent here, not even in an error: ``max_tokens`` defaults to what fits
  the smallest context of all the arena's models, and every limit is checked against all of them,
  so no answer before the vote depends on the pair drawn. A client that disconnects stops both
  generations and no battle is stored.
- ``POST /arena/battles/{id}/vote`` ``{"vote": "a"|"b"|"tie"|"bothbad"}`` -> ``{"id", "vote",
  "model_a", "model_b"}``: the names, revealed. It answers only after the store has committed
  (fsynced) the vote, so an acknowledged vote survives a crash.
- ``GET /arena/battles/{id}``: one's own battle (names only once voted).
- ``GET /arena/leaderboard`` (page), ``/arena/leaderboard.json`` and ``/arena/leaderboard.png``:
  Bradley-Terry ratings with bootstrap 95% intervals (``gptforge.arena.ratings.leaderboard``,
  ``ROUNDS`` rounds, seed 0) of every voted battle in the file.

Sessions: a random token in an HttpOnly, SameSite=Strict cookie (``COOKIE``), set on the first
visit to /arena or the first battle. A battle can be read and voted on only with the cookie it was
created under: another session gets 403, an unknown id 404 (ids are 128-bit random tokens), a
second vote 409, a vote that is not one of the four 400. Generating costs compute, so with
``--api-key`` a battle needs the key like /v1 does; voting and the leaderboard do not.

Errors are OpenAI-shaped JSON like the rest of the app (``APIError``).
"""

from __future__ import annotations

import asyncio
import html
import random
import secrets
import tempfile
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse

from gptforge.arena.ratings import leaderboard, plot_ratings
from gptforge.arena.store import BattleError, VoteStore
from gptforge.chat.assistant import fit_context
from gptforge.chat.conversation import check_conversation
from gptforge.chat.render import render_for_completion
from gptforge.errors import UserError
from gptforge.serve.batcher import Inbox, Job, QueueFull, RowParams
from gptforge.serve.limits import Limits
from gptforge.serve.protocol import (
    STATIC,
    STREAM_INTERVAL,
    APIError,
    Body,
    MaxTokens,
    Served,
    Temperature,
    TopK,
    TopP,
    add_part,
    max_new_tokens,
    server_error,
    sse_line,
)

COOKIE = "gptforge_arena_session"
COOKIE_MAX_AGE_S = 365 * 24 * 3600
ROUNDS, SEED = 100, 0  # bootstrap rounds of the leaderboard: enough for 95% intervals, and quick
# BattleError.kind -> (HTTP status, OpenAI-style error code)
BATTLE_ERRORS = {"unknown": (404, "battle_not_found"), "forbidden": (403, "not_your_battle"),
                 "voted": (409, "already_voted"), "invalid": (400, "invalid_value")}


def draw_pair(names: list[str], rng: random.Random) -> tuple[str, str]:
    """Two different models from ``names``, in random order: (side A, side B). ``random.sample``
    draws without replacement and its order is random, so the sides are shuffled too."""
    return tuple(rng.sample(names, 2))


class BattleRequest(Body):
    prompt: str
    temperature: Temperature = 1.0
    max_tokens: MaxTokens | None = None
    top_k: TopK | None = None
    top_p: TopP = 1.0


class VoteRequest(Body):
    vote: str  # a | b | tie | bothbad: the store refuses anything else (BattleError "invalid")


def add_arena(app: FastAPI, served: dict[str, Served], limits: Limits, db_path: str | Path,
              authorize) -> None:
    """Add the arena's routes (see the module docstring) to ``app``; ``authorize``: the /v1 key
    check (a FastAPI dependency), which starting a battle needs too. The database is created now
    when at least two chat models are served; with fewer, the arena is off but the leaderboard
    still reads an existing file (read-only).

    Raises:
        UserError: ``db_path`` cannot be opened as an arena database, or is damaged.
    """
    arena = Arena(served, limits, Path(db_path))
    app.add_api_route("/arena", arena.page)
    app.add_api_route("/arena/battles", arena.new_battle, methods=["POST"], dependencies=[authorize])
    app.add_api_route("/arena/battles/{battle_id}/vote", arena.vote, methods=["POST"])
    app.add_api_route("/arena/battles/{battle_id}", arena.get_battle)
    app.add_api_route("/arena/leaderboard", lambda: FileResponse(STATIC / "leaderboard.html"))
    board = Leaderboard(arena.reader)

    @app.get("/arena/leaderboard.json")
    async def leaderboard_json():
        rows, n, _ = await asyncio.to_thread(board.get, False)
        return {"battles": n, "rounds": ROUNDS, "seed": SEED, "models": [r.to_dict() for r in rows]}

    @app.get("/arena/leaderboard.png")
    async def leaderboard_png():
        rows, n, png = await asyncio.to_thread(board.get, True)
        if not rows:
            raise APIError(404, "no votes yet: no ratings to plot", code="no_votes")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


class Arena:
    """The arena's state (contenders, vote store) and its battle routes."""

    def __init__(self, served: dict[str, Served], limits: Limits, db_path: Path):
        self.served, self.limits = served, limits
        self.contenders = sorted(name for name, s in served.items() if s.chat)
        self.ready = len(self.contenders) >= 2
        self.store = VoteStore(db_path) if self.ready else None
        # with the arena off, the leaderboard only reads: an existing file, opened read-only
        self.reader = self.store or (VoteStore(db_path, readonly=True) if db_path.exists() else None)
        if self.reader is not None:
            self.reader.check()  # damage anywhere in the file: refuse to start, not a 500 at a read
        self.rng = random.SystemRandom()  # the draw must not be predictable from outside
        self.why_off = (f"The arena needs at least two chat models; this server has {len(self.contenders)} "
                        f"({', '.join(self.contenders) or 'none'}). Start it with two: "
                        "gptforge serve --ckpt a=DIR --ckpt b=DIR")
        # every limit a battle is checked against is the smallest over all contenders, never the
        # drawn pair's: an error must not tell which models were drawn (nor name one) before the vote
        self.context = min((served[n].block_size for n in self.contenders), default=0)

    def page(self, request: Request):
        if not self.ready:
            page = (f"<!doctype html><meta charset=utf-8><title>gptforge arena</title>"
                    f"<link rel=stylesheet href=/static/style.css><main><h1>Arena unavailable</h1>"
                    f"<p id=arena-off>{html.escape(self.why_off)}</p><p><a href=/>chat page</a> · "
                    f"<a href=/arena/leaderboard>leaderboard</a></p></main>")
            return HTMLResponse(page, status_code=400)
        return with_session(FileResponse(STATIC / "arena.html"), request)

    def prompts(self, prompt: str, max_new: int) -> dict[str, list[int]]:
        """The prompt rendered for every contender: {name: token ids}. Raises APIError 400 when it is
        not a valid prompt, or does not fit (or tokenize) for some contender (which is not named)."""
        if not prompt.strip():
            raise APIError(400, "prompt: expected a non-empty string", param="prompt")
        if len(prompt) > self.limits.max_chars:
            raise APIError(400, f"prompt: {len(prompt)} characters, more than the {self.limits.max_chars} "
                                "allowed", param="prompt")
        try:  # a lone surrogate, as /v1 does: refused before anything is generated (storing it would fail)
            convo = check_conversation([{"role": "user", "content": prompt}], ends_with_assistant=False)
        except ValueError as e:
            raise APIError(400, f"prompt: {e}", param="prompt") from None
        out = {}
        for name in self.contenders:
            s = self.served[name]
            try:
                fit_context(convo, s.batcher.tok, s.block_size - max_new)
                out[name] = render_for_completion(convo, s.batcher.tok)
            except UserError as e:
                raise APIError(400, f"prompt: too long for the arena's models: {e} (or lower max_tokens)",
                               param="prompt", code="context_length_exceeded") from None
            except ValueError as e:
                raise APIError(400, f"prompt: cannot tokenize: {e}", param="prompt") from None
        return out

    async def new_battle(self, body: BattleRequest, request: Request):
        if not self.ready:
            raise APIError(400, self.why_off, code="arena_unavailable")
        max_new = max_new_tokens(body.max_tokens, "max_tokens", self.context, self.limits.default_max_tokens,
                                 "the smallest context of the arena's models")  # no model named
        prompts = self.prompts(body.prompt, max_new)
        params = RowParams(max_new=max_new, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p)
        settings = {"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
                    "max_tokens": max_new}
        name_a, name_b = draw_pair(self.contenders, self.rng)
        pair = {"a": self.served[name_a], "b": self.served[name_b]}
        session = session_of(request) or secrets.token_urlsafe(32)
        battle = Battle(pair, {"a": prompts[name_a], "b": prompts[name_b]}, params)
        battle.submit()  # before the response starts, so that a full queue is a plain 429
        response = StreamingResponse(battle.stream(self.store, body.prompt, settings, session),
                                     media_type="text/event-stream")
        return with_session(response, request, session)

    async def _in_store(self, method: str, *args) -> dict:
        """The store's ``method(*args)``, in a thread (a vote's commit waits for an fsync, which must
        not stall the event loop); a BattleError becomes its HTTP error."""
        if self.store is None:
            raise APIError(400, self.why_off, code="arena_unavailable")
        try:
            return await asyncio.to_thread(getattr(self.store, method), *args)
        except BattleError as e:
            status, code = BATTLE_ERRORS[e.kind]
            raise APIError(status, str(e), param="vote" if e.kind == "invalid" else None, code=code) from None

    async def vote(self, battle_id: str, body: VoteRequest, request: Request):
        b = await self._in_store("record_vote", battle_id, session_of(request), body.vote)
        return {"id": b["id"], "vote": b["vote"], "model_a": b["model_a"], "model_b": b["model_b"]}

    async def get_battle(self, battle_id: str, request: Request):
        b = await self._in_store("get_battle", battle_id, session_of(request))
        out = {k: b[k] for k in ("id", "prompt", "reply_a", "reply_b", "sampling", "vote", "created_at")}
        if b["vote"] is not None:  # blind until voted
            out.update(model_a=b["model_a"], model_b=b["model_b"])
        return out


def session_of(request: Request) -> str:
    return request.cookies.get(COOKIE, "")


def with_session(response: Response, request: Request, session: str | None = None) -> Response:
    """Give the browser a session cookie (``session``, or a new random one) if it has none yet.
    HttpOnly: the page's script never sees it; SameSite=Strict: another site cannot vote with it."""
    if not session_of(request):
        response.set_cookie(COOKIE, session or secrets.token_urlsafe(32), max_age=COOKIE_MAX_AGE_S,
                            path="/arena", httponly=True, samesite="strict")
    return response


class Battle:
    """One battle's two generations: ``submit()`` queues both jobs, ``stream(...)`` yields the
    server-sent events and stores the battle at the end. Each model has its own batcher thread, so
    the two replies are generated at the same time."""

    def __init__(self, pair: dict[str, Served], prompts: dict[str, list[int]], params: RowParams):
        self.pair = pair
        self.events = Inbox(asyncio.get_running_loop())  # of (side, events) pairs
        self.jobs = {side: Job(prompt=prompts[side], rows=[params], chat=True, send=self._sender(side))
                     for side in pair}

    def _sender(self, side: str):
        # called on a batcher's thread
        return lambda evs: self.events.put([(side, evs)], urgent=any(e.finish for e in evs))

    def cancel(self) -> None:
        for job in self.jobs.values():
            job.cancelled = True

    def submit(self) -> None:
        """Queue both jobs. Raises APIError 429 when a model's queue is full (nothing left running)."""
        for side, s in self.pair.items():
            try:
                s.batcher.submit(self.jobs[side])
            except QueueFull as e:
                self.cancel()
                raise APIError(429, f"a model is busy: {e}; retry later", code="queue_full",
                               type="rate_limit_error") from None

    async def stream(self, store: VoteStore, prompt: str, settings: dict, session: str):
        """The server-sent events (see the module docstring). ``finally`` cancels both generations, so
        a client that goes away stops them (and no battle is stored)."""
        parts: dict[str, list[dict]] = {side: [] for side in self.pair}
        running = set(self.pair)
        try:
            while running:
                out = []
                for side, e in ((side, e) for side, evs in await self.events.get() for e in evs):
                    if e.finish == "error":
                        yield "".join(out) + sse_line(server_error().body())
                        return
                    if e.part is not None:
                        out.append(sse_line({"side": side, "part": e.part}))
                    elif e.text:
                        out.append(sse_line({"side": side, "text": e.text}))
                    add_part(parts[side], e)
                    if e.finish is not None:
                        running.discard(side)
                        out.append(sse_line({"side": side, "finish": e.finish}))
                if out:
                    yield "".join(out)
                    if running:
                        await self.events.settle(STREAM_INTERVAL)
            # the store keeps a reply that is only text as a plain string, else the list of parts
            a, b = (ps if any(p["type"] != "text" for p in ps) else "".join(p["text"] for p in ps)
                    for ps in (parts["a"], parts["b"]))
            bid = await asyncio.to_thread(store.create_battle, session, prompt, self.pair["a"].name,
                                          self.pair["b"].name, a, b, settings)
            yield sse_line({"battle_id": bid})
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()


class Leaderboard:
    """The leaderboard of the store's voted battles, recomputed only when they changed (a bootstrap
    of ROUNDS fits per request would be wasteful; votes are never taken back, so the number of voted
    battles and the latest vote time identify the data). Thread-safe: called via asyncio.to_thread."""

    def __init__(self, store: VoteStore | None):
        self.store = store
        self.lock = threading.Lock()
        self.key, self.rows, self.png = None, [], None

    def get(self, want_png: bool) -> tuple[list, int, bytes | None]:
        """(rows best first, number of voted battles, PNG bytes when ``want_png`` and there are votes).

        Raises:
            APIError: 500 when the database cannot be read (damaged since the server started).
        """
        try:
            battles = self.store.fastchat_battles() if self.store is not None else []
        except UserError as e:
            raise APIError(500, str(e), type="server_error", code="arena_database_error") from None
        key = (len(battles), max((b["tstamp"] or 0 for b in battles), default=0))
        with self.lock:
            if key != self.key:
                self.rows = leaderboard(battles, rounds=ROUNDS, seed=SEED) if battles else []
                self.key, self.png = key, None
            if want_png and self.rows and self.png is None:
                with tempfile.TemporaryDirectory() as tmp:
                    self.png = plot_ratings(self.rows, Path(tmp) / "ratings.png").read_bytes()
            return self.rows, len(battles), self.png

