"""The HTTP side of `gptforge serve`: OpenAI's Chat Completions and Completions protocols on FastAPI.

    app = create_app({"mymodel": (model, tok)}, api_key=None, limits=Limits())
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints (shapes as in OpenAI's API reference, https://platform.openai.com/docs/api-reference/chat):

- ``POST /v1/chat/completions``: ``messages`` -> the next assistant turn; ``stream: true`` sends
  server-sent events (``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n``), with a last chunk holding
  ``usage`` when ``stream_options.include_usage`` is true.
- ``POST /v1/completions``: ``prompt`` (text) -> continuation, for base models (and chat models).
- ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (batch statistics; no key needed),
  ``GET /`` the chat page (static files in ``gptforge/serve/static``).
- With ``arena_db``: ``/arena`` (blind battles between two served chat models, votes) and
  ``/arena/leaderboard``; see gptforge/serve/arena.py.

Parameters: ``temperature`` [0, 2], ``top_p`` (0, 1], ``max_tokens`` / ``max_completion_tokens``,
``stop`` (a string or up to 4), ``seed``, ``n`` and, as an extra body field, ``top_k``. Other OpenAI
fields (``presence_penalty``, ``user``, ...) are accepted and ignored.

Tool calls run on the server (the calculator, as in `gptforge chat`). They appear in ``content``
written as ``<<expr=result>>`` (GSM8K's calculator notation), and exactly in two extra fields: a
non-streamed message has ``gptforge_parts``, the assistant turn as gptforge's list of parts
(``{"type": "text" | "tool_call" | "tool_output", "text"}``), and a streamed delta that carries a
tool call or output has ``gptforge_part``. A client may send an assistant message back with
``content`` set to that list of parts, so the model sees its tool calls as the special tokens.

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``, never a traceback:
400 for every invalid request (malformed JSON, missing or malformed messages, too many messages or
characters, parameters out of range or of the wrong type, max_tokens that leave no room for the
prompt; FastAPI's 422 is mapped to 400 too), 401 for a missing or wrong API key, 404 for an unknown
model or path, 413 for a body over ``max_body_bytes``, 429 when the model's queue is full, 500 for a
bug. A conversation longer than the context loses its oldest turns (``fit_context``; the response
header ``X-Gptforge-Dropped-Messages`` says how many); when even its newest user turn does not fit,
400 with code ``context_length_exceeded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gptforge.chat.assistant import fit_context
from gptforge.chat.conversation import check_conversation
from gptforge.chat.render import render_for_completion
from gptforge.errors import UserError
from gptforge.serve.batcher import Batcher, Event, Inbox, Job, QueueFull, RowParams
from gptforge.serve.limits import Limits  # torch-free there, for the CLI's flags

STATIC = Path(__file__).parent / "static"
# A stream writes at most once per STREAM_INTERVAL seconds (everything decoded meanwhile goes in one
# write; the first token and a row's end are never held back): waking the event loop for every token
# of a small model slowed decoding on 2 cores (bench/README.md, serve.py). 20 ms is below what a
# reader of streamed text can see.
STREAM_INTERVAL = 0.02


def is_loopback(host: str) -> bool:
    """True for ``localhost`` (and its subdomains), 127.0.0.0/8 and ::1 (brackets allowed)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(authority: str) -> str:
    """``"127.0.0.1:8000"`` -> ``"127.0.0.1"``, ``"[::1]:80"`` -> ``"::1"`` (lower case)."""
    return (urlsplit("//" + authority).hostname or "") if authority else ""


class Guard:
    """ASGI middleware that keeps web pages from driving a local server (what Jupyter and local model
    servers do against cross-site requests and DNS rebinding; a server with no --api-key is otherwise
    open to any page its user visits):

    - Host: when the server is bound to a loopback address, only loopback names (``localhost``,
      127.x.x.x, ``[::1]``) and ``allowed_hosts`` are served (a rebound DNS name gets 403).
    - Origin: a request whose ``Origin`` is not the server's own (``scheme://Host``) nor in
      ``allowed_origins`` (``*``: any) gets 403; browsers send ``Origin`` with every cross-origin
      request and every POST.
    - Content-Type: a POST with a body type other than ``application/json`` gets 415, so a page
      cannot send JSON as ``text/plain`` or a form (which browsers send without asking the server).
      A request without the header (curl, scripts) is read as JSON.
    """

    def __init__(self, app, loopback: bool, allowed_hosts=(), allowed_origins=()):
        self.app, self.loopback = app, loopback
        self.hosts = {h.lower() for h in allowed_hosts}
        self.origins = {o.rstrip("/").lower() for o in allowed_origins}

    def refusal(self, scope) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        name = host_name(host)
        if self.loopback and not (is_loopback(name) or name in self.hosts or "*" in self.hosts):
            return APIError(403, f"host {host!r} is not allowed: this server answers only to "
                                 "localhost (start it with --allowed-host NAME to add one)",
                            code="host_not_allowed", type="permission_error")
        origin = headers.get("origin")
        if origin is not None:
            own = {f"{scheme}://{host}".lower() for scheme in ("http", "https")}
            o = origin.rstrip("/").lower()
            if o not in own and o not in self.origins and "*" not in self.origins:
                return APIError(403, f"origin {origin!r} is not allowed: web pages of other sites cannot "
                                     "use this server (start it with --allowed-origin ORIGIN to allow "
                                     "one)", code="origin_not_allowed", type="permission_error")
        kind = headers.get("content-type")
        if scope["method"] == "POST" and kind is not None \
                and kind.split(";")[0].strip().lower() != "application/json":
            return APIError(415, f"Content-Type {kind!r}: expected application/json",
                            code="unsupported_media_type")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (e := self.refusal(scope)) is not None:
            return await e.response()(scope, receive, send)
        return await self.app(scope, receive, send)


class APIError(Exception):
    """An error answered as OpenAI's error JSON with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


@dataclass
class Served:
    """A model the server offers: its batcher, context size and whether it can chat."""

    name: str
    batcher: Batcher
    block_size: int

    @property
    def chat(self) -> bool:
        return self.batcher.chat_tokens is not None


def create_app(models: dict, api_key: str | None = None, limits: Limits | None = None,
               arena_db: str | Path | None = None, host: str = "127.0.0.1", allowed_hosts=(),
               allowed_origins=()) -> FastAPI:
    """The FastAPI app serving ``models``, name -> (model in eval mode, tokenizer); each model gets a
    Batcher thread. ``api_key``: require ``Authorization: Bearer <api_key>`` on /v1 (401 otherwise).
    ``host``: the address the server binds (loopback: only loopback Host names and ``allowed_hosts``
    are served); ``allowed_origins``: other sites' origins (``https://example.com``) whose pages may
    call it, with CORS headers; see `Guard`.
    ``arena_db``: an SQLite file for the arena's votes, which adds /arena and /arena/leaderboard
    (gptforge.serve.arena; None: no arena). ``app.state.served`` maps names to `Served` (tests read
    the batchers' statistics there).

    Raises:
        UserError: ``arena_db`` cannot be used as an arena database.
    """
    limits = limits or Limits()
    if not models:
        raise ValueError("create_app needs at least one model")
    served = {name: Served(name, Batcher(m, tok, limits.max_batch, limits.max_queue), m.config.block_size)
              for name, (m, tok) in models.items()}
    created = int(time.time())
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for s in served.values():  # let the batcher threads end
            s.batcher.stop()

    app = FastAPI(title="gptforge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.served = served
    if allowed_origins:  # the browser's preflight and response headers for the origins allowed
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    app.add_middleware(Guard, loopback=is_loopback(host), allowed_hosts=allowed_hosts,
                       allowed_origins=allowed_origins)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):  # FastAPI's 422, in OpenAI's shape
        first = e.errors()[0] if e.errors() else {}
        return APIError(400, f"invalid request: {first.get('msg', e)}").response()

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = f"{request.method} {request.url.path}: {e.detail}"
        return APIError(e.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        traceback.print_exc(file=sys.stderr)
        return APIError(500, "internal server error (see the server's log)", type="server_error").response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), api_key.encode())):
            raise APIError(401, "missing or wrong API key (send the header Authorization: Bearer KEY)",
                           code="invalid_api_key", type="authentication_error")

    def model_card(s: Served) -> dict:
        return {"id": s.name, "object": "model", "created": created, "owned_by": "gptforge",
                "context_length": s.block_size, "chat": s.chat}

    @app.get("/health")
    def health():
        return {"status": "ok", "models": {n: s.batcher.stats() for n, s in served.items()}}

    @app.get("/v1/models")
    def list_models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card(s) for s in served.values()]}

    @app.get("/v1/models/{name}")
    def get_model(name: str, request: Request):
        authorize(request)
        return model_card(find_model(served, name))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_json(request, limits)
        s = find_model(served, body.get("model"))
        if not s.chat:
            raise APIError(400, f"model {s.name!r} has no chat tokens (a base model); use /v1/completions",
                           param="model", code="not_a_chat_model")
        messages = check_messages(body.get("messages"), limits)
        max_new = max_tokens(body, s, limits)
        try:
            convo, dropped = fit_context(messages, s.batcher.tok, s.block_size - max_new)
        except UserError as e:
            raise APIError(400, f"{e} (or lower max_tokens)", param="messages",
                           code="context_length_exceeded") from None
        prompt = render_for_completion(convo, s.batcher.tok)
        headers = {"X-Gptforge-Dropped-Messages": str(dropped)}
        return await answer(request, s, prompt, sampling(body, max_new, limits), chat=True, body=body,
                            headers=headers)

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = await read_json(request, limits)
        s = find_model(served, body.get("model"))
        text = body.get("prompt")
        if isinstance(text, list) and len(text) == 1:
            text = text[0]
        if not isinstance(text, str):
            raise APIError(400, "prompt: expected a string", param="prompt")
        if len(text) > limits.max_chars:
            raise APIError(400, f"prompt: {len(text)} characters, more than the {limits.max_chars} allowed",
                           param="prompt")
        tok = s.batcher.tok
        try:
            prompt = tok.encode_ordinary(text) if text else ([tok.eot_id] if tok.eot_id is not None else [])
        except ValueError as e:  # a char tokenizer meets a character it lacks
            raise APIError(400, f"prompt: cannot tokenize: {e}", param="prompt") from None
        if not prompt:
            raise APIError(400, "prompt: empty, and this tokenizer has no <|endoftext|> to start from",
                           param="prompt")
        max_new = max_tokens(body, s, limits)
        if len(prompt) + max_new > s.block_size:
            raise APIError(400, f"prompt is {len(prompt)} tokens; with max_tokens {max_new} that is more "
                                f"than the model's context of {s.block_size}", param="prompt",
                           code="context_length_exceeded")
        return await answer(request, s, prompt, sampling(body, max_new, limits), chat=False, body=body)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html")

    if arena_db is not None:
        from gptforge.serve.arena import add_arena  # here: that module builds on this one's helpers

        try:
            add_arena(app, served, limits, arena_db, authorize)
        except BaseException:  # e.g. a damaged database: no batcher thread outlives the refusal
            for s in served.values():
                s.batcher.stop()
            raise
    return app


# --- reading requests ---------------------------------------------------------------------------------


async def read_json(request: Request, limits: Limits) -> dict:
    """The body as a JSON object. Raises APIError: 413 over ``limits.max_body_bytes``, 408 when it
    takes longer than ``limits.body_timeout_s`` to arrive (a client holding a half-sent request would
    otherwise hold the server, even its shutdown), 400 not a JSON object or the client left."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {declared} bytes, more than the {limit} allowed",
                       code="request_too_large")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():  # counted as it arrives: a chunked upload cannot exceed it
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"request body is more than the {limit} bytes allowed",
                                   code="request_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(408, f"request body not received within {limits.body_timeout_s:g} s",
                       code="request_timeout") from None
    except ClientDisconnect:  # normal: the client left mid-upload (no one reads the answer)
        raise APIError(400, "the client disconnected while sending the request",
                       code="client_disconnected") from None
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    return body


def find_model(served: dict[str, Served], name) -> Served:
    if not isinstance(name, str) or not name:
        raise APIError(400, "model: required (see GET /v1/models)", param="model")
    if name not in served:
        raise APIError(404, f"model {name!r} does not exist; this server has {', '.join(served)}",
                       param="model", code="model_not_found")
    return served[name]


def check_messages(messages, limits: Limits) -> list[dict]:
    """OpenAI messages -> a gptforge conversation ending with a user turn. ``developer`` counts as
    ``system``; a user message's content may be a list of ``{"type": "text", "text"}`` parts.

    Raises:
        APIError: 400 naming what is wrong (empty, too many, too long, malformed).
    """
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages: expected a non-empty list of messages", param="messages")
    if len(messages) > limits.max_messages:
        raise APIError(400, f"messages: {len(messages)} messages, more than the {limits.max_messages} "
                            "allowed", param="messages")
    out, chars = [], 0
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict):
            raise APIError(400, f"messages: message {i} is not an object", param="messages")
        m = {"role": "system" if m.get("role") == "developer" else m.get("role"), "content": m.get("content")}
        c = m["content"]
        if m["role"] in ("user", "system") and isinstance(c, list):  # OpenAI's content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in c):
                raise APIError(400, f"messages: message {i}: only text content parts are supported",
                               param="messages")
            m["content"] = c = "".join(p["text"] for p in c)
        elif m["role"] == "assistant" and isinstance(c, list):  # gptforge_parts sent back: drop blank text
            m["content"] = c = [p for p in c if not is_blank_text(p)]
        chars += len(c) if isinstance(c, str) else sum(len(str(p.get("text", ""))) for p in c
                                                       if isinstance(p, dict)) if isinstance(c, list) else 0
        out.append(m)
    if chars > limits.max_chars:
        raise APIError(400, f"messages: {chars} characters, more than the {limits.max_chars} allowed",
                       param="messages")
    try:
        out = check_conversation(out, ends_with_assistant=False)
    except ValueError as e:
        raise APIError(400, f"messages: {e}", param="messages") from None
    if out[-1]["role"] != "user":
        raise APIError(400, "messages: the last message must be the user's", param="messages")
    return out


def is_blank_text(part) -> bool:
    """A text part holding only whitespace (a reply can have one; the conversation check refuses it)."""
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) \
        and not part["text"].strip()


def number(body: dict, name: str, default, lo, hi, *, integer: bool = False, lo_open: bool = False):
    """``body[name]`` (None or absent: ``default``) checked to be a number in [lo, hi] (or (lo, hi]).

    Raises:
        APIError: 400 naming the parameter and its range.
    """
    v = body.get(name)
    if v is None:
        return default
    kind = int if integer else (int, float)
    ok = isinstance(v, kind) and not isinstance(v, bool) and (lo < v if lo_open else lo <= v) and v <= hi
    if not ok or v != v:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
        what = "an integer" if integer else "a number"
        raise APIError(400, f"{name}: {json.dumps(v)} is not {what} in {rng}", param=name,
                       code="invalid_value")
    return v


def max_tokens(body: dict, s: Served, limits: Limits) -> int:
    """max_completion_tokens (newer clients) or max_tokens; default: ``limits.default_max_tokens``, at
    most half the context. Raises APIError 400 when it leaves no room for the prompt."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    default = min(limits.default_max_tokens, s.block_size // 2)
    n = number(body, name, default, 1, 1 << 30, integer=True)
    if n > s.block_size - 8:  # the shortest chat prompt is about 5 tokens
        raise APIError(400, f"{name}: {n} is beyond model {s.name!r}'s context of {s.block_size} tokens "
                            f"(at most {s.block_size - 8})", param=name, code="context_length_exceeded")
    return n


def sampling(body: dict, max_new: int, limits: Limits) -> list[RowParams]:
    """One RowParams per choice (``n``) from the request's sampling parameters. Raises APIError 400."""
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(x, str) and x for x in stop)):
        raise APIError(400, "stop: expected a non-empty string or a list of at most 4", param="stop")
    for name in ("stream",):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise APIError(400, f"{name}: expected true or false", param=name)
    opts = body.get("stream_options")
    if opts is not None and not (isinstance(opts, dict) and isinstance(opts.get("include_usage", 0), bool)):
        raise APIError(400, 'stream_options: expected {"include_usage": true|false}', param="stream_options")
    n = number(body, "n", 1, 1, min(limits.max_n, limits.max_batch), integer=True)
    params = RowParams(max_new=max_new, temperature=number(body, "temperature", 1.0, 0, 2),
                       top_k=number(body, "top_k", None, 1, 1 << 24, integer=True),
                       top_p=number(body, "top_p", 1.0, 0, 1, lo_open=True),
                       seed=number(body, "seed", None, 0, 2**63 - 1 - limits.max_n, integer=True),
                       stop=tuple(stop))
    return [params] * n


# --- answering ----------------------------------------------------------------------------------------


async def answer(request: Request, s: Served, prompt: list[int], rows: list[RowParams], *, chat: bool,
                 body: dict, headers: dict | None = None) -> Response:
    """Queue the job, then stream its events as SSE or collect them into one JSON response. A client
    that goes away cancels the job (its rows stop at the batcher's next step)."""
    events = Inbox(asyncio.get_running_loop())
    job = Job(prompt=prompt, rows=rows, chat=chat,
              send=lambda evs: events.put(evs, urgent=any(e.finish for e in evs)))
    try:
        s.batcher.submit(job)
    except QueueFull as e:
        raise APIError(429, f"model {s.name!r} is busy: {e}; retry later", code="queue_full",
                       type="rate_limit_error") from None
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    meta = {"id": rid, "created": int(time.time()), "model": s.name}
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        gen = sse(job, events, meta, chat, len(prompt), usage)
        return StreamingResponse(gen, media_type="text/event-stream", headers=headers)
    try:
        return JSONResponse(await collect(request, job, events, meta, chat, len(prompt)), headers=headers)
    finally:
        job.cancelled = True  # done anyway, or the client left (the handler was cancelled)


async def collect(request: Request, job: Job, events: Inbox, meta: dict, chat: bool,
                  prompt_tokens: int) -> dict:
    """The whole response of a non-streamed request."""
    n = len(job.rows)
    texts, parts, finish, tokens = [""] * n, [[] for _ in range(n)], [None] * n, 0
    checked = time.monotonic()
    while any(f is None for f in finish):
        await events.settle(0.25)  # until a row ends, or 0.25 s
        evs = events.take()
        if time.monotonic() - checked > 0.25:  # now and then: is the client still there?
            checked = time.monotonic()
            if await request.is_disconnected():
                job.cancelled = True
                raise APIError(499, "client closed the request")
        for e in evs:
            texts[e.index] += e.text
            add_part(parts[e.index], e)
            if e.finish is not None:
                if e.finish == "error":
                    raise APIError(500, "internal server error (see the server's log)", type="server_error")
                finish[e.index], tokens = e.finish, tokens + e.tokens
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
             "total_tokens": prompt_tokens + tokens}
    if chat:
        choices = [{"index": i, "logprobs": None, "finish_reason": finish[i],
                    "message": {"role": "assistant", "content": texts[i], "gptforge_parts": parts[i]}}
                   for i in range(n)]
        return {**meta, "object": "chat.completion", "choices": choices, "usage": usage}
    choices = [{"index": i, "text": texts[i], "logprobs": None, "finish_reason": finish[i]} for i in range(n)]
    return {**meta, "object": "text_completion", "choices": choices, "usage": usage}


def add_part(parts: list[dict], e: Event) -> None:
    """Append event ``e`` to a reply's list of parts (consecutive text joined; markers left out)."""
    if e.part is not None:
        parts.append(dict(e.part))
    elif e.text:
        if parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += e.text
        else:
            parts.append({"type": "text", "text": e.text})


def sse_line(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def sse(job: Job, events: Inbox, meta: dict, chat: bool, prompt_tokens: int,
              include_usage: bool):
    """The server-sent events of a streamed request. On a disconnect the server stops iterating this
    generator; ``finally`` then cancels the job."""
    n, open_rows, tokens = len(job.rows), len(job.rows), 0
    obj = "chat.completion.chunk" if chat else "text_completion"
    extra = {"usage": None} if include_usage else {}

    def chunk(i: int, text: str = "", part: dict | None = None, finish: str | None = None, first=False):
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            if part is not None:
                delta["gptforge_part"] = part
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
        return sse_line({**meta, "object": obj, "choices": [choice], **extra})

    try:
        if chat:
            for i in range(n):
                yield chunk(i, first=True)
        while open_rows:
            out = []
            for e in await events.get():  # everything since the last write
                if e.finish == "error":
                    yield "".join(out) + sse_line({"error": {
                        "message": "internal server error (see the server's log)", "type": "server_error",
                        "param": None, "code": None}})
                    return
                if e.text or e.part:
                    out.append(chunk(e.index, e.text, e.part))
                if e.finish is not None:
                    open_rows -= 1
                    tokens += e.tokens
                    out.append(chunk(e.index, finish=e.finish))
            if out:
                yield "".join(out)
                if open_rows:
                    await events.settle(STREAM_INTERVAL)  # let the tokens gather; a row's end comes at once
        if include_usage:
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                     "total_tokens": prompt_tokens + tokens}
            yield sse_line({**meta, "object": obj, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # finished anyway, or the client went away mid-stream
