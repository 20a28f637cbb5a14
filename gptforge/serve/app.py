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

Request bodies are pydantic models (``ChatRequest``, ``CompletionRequest``), validated by FastAPI.
Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``, never a traceback:
400 for every invalid request (malformed JSON, missing or malformed messages, too many messages or
characters, parameters out of range or of the wrong type, max_tokens that leave no room for the
prompt; FastAPI's 422 is mapped to 400 naming the field), 401 for a missing or wrong API key, 403 for
a Host or Origin a local server does not serve (`Guard`), 404 for an unknown model or path, 408 for a
body not sent within ``body_timeout_s``, 413 for a body over ``max_body_bytes``, 415 for a POST that
is not JSON, 429 when the model's queue is full, 500 for a bug. A conversation longer than the
context loses its oldest turns (``fit_context``; the response header ``X-Gptforge-Dropped-Messages``
says how many); when even its newest user turn does not fit, 400 with code ``context_length_exceeded``.
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
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gptforge.chat.assistant import fit_context
from gptforge.chat.conversation import check_conversation
from gptforge.chat.render import render_for_completion
from gptforge.errors import UserError
from gptforge.serve.arena import add_arena
from gptforge.serve.batcher import Batcher, Inbox, Job, QueueFull, RowParams
from gptforge.serve.limits import Limits  # torch-free there, for the CLI's flags
from gptforge.serve.protocol import (
    STATIC,
    STREAM_INTERVAL,
    APIError,
    Body,
    MaxTokens,
    Served,
    Temperature,
    Text,
    TopK,
    TopP,
    add_part,
    max_new_tokens,
    server_error,
    sse_line,
)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` (and its subdomains), 127.0.0.0/8 and ::1 (brackets allowed)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware in front of every route: what a request must be before any handler sees it.

    Web pages cannot drive a local server (what Jupyter and local model servers do against
    cross-site requests and DNS rebinding; a server with no --api-key is otherwise open to any page
    its user visits):

    - Host: when the server is bound to a loopback address, only loopback names (``localhost``,
      127.x.x.x, ``[::1]``) and ``allowed_hosts`` are served (a rebound DNS name gets 403).
    - Origin: a request whose ``Origin`` is not the server's own (``scheme://Host``) nor in
      ``allowed_origins`` (``*``: any) gets 403; browsers send ``Origin`` with every cross-origin
      request and every POST.
    - Content-Type: a POST with a body type other than ``application/json`` gets 415, so a page
      cannot send JSON as ``text/plain`` or a form (which browsers send without asking the server).
      A request without the header (curl, scripts) is read as JSON.

    A POST body is read here, whole, before the route parses it: 413 beyond ``limits.max_body_bytes``
    (counted as it arrives, so a chunked upload cannot exceed it either), 408 when it takes longer
    than ``limits.body_timeout_s`` (a client holding a half-sent request would otherwise hold the
    server, even its shutdown); a client that leaves mid-upload is simply dropped (no traceback).
    """

    def __init__(self, app, limits: Limits, loopback: bool, allowed_hosts=(), allowed_origins=()):
        self.app, self.limits, self.loopback = app, limits, loopback
        self.hosts = {h.lower() for h in allowed_hosts}
        self.origins = {o.rstrip("/").lower() for o in allowed_origins}

    def refuse(self, scope, headers: dict) -> None:
        """Raise APIError 403 for a host or origin not allowed, 415 for a POST body not JSON."""
        host = headers.get("host", "")
        name = (urlsplit("//" + host).hostname or "") if host else ""  # "[::1]:80" -> "::1", lower case
        if self.loopback and not (is_loopback(name) or name in self.hosts or "*" in self.hosts):
            raise APIError(403, f"host {host!r} is not allowed: this server answers only to "
                                "localhost (start it with --allowed-host NAME to add one)",
                           code="host_not_allowed", type="permission_error")
        origin = headers.get("origin")
        if origin is not None:
            own = {f"{scheme}://{host}".lower() for scheme in ("http", "https")}
            o = origin.rstrip("/").lower()
            if o not in own and o not in self.origins and "*" not in self.origins:
                raise APIError(403, f"origin {origin!r} is not allowed: web pages of other sites cannot "
                                    "use this server (start it with --allowed-origin ORIGIN to allow "
                                    "one)", code="origin_not_allowed", type="permission_error")
        kind = headers.get("content-type")
        if scope["method"] == "POST" and kind is not None \
                and kind.split(";")[0].strip().lower() != "application/json":
            raise APIError(415, f"Content-Type {kind!r}: expected application/json",
                           code="unsupported_media_type")

    async def read_body(self, headers: dict, receive) -> bytes:
        """The whole body. Raises APIError 413 or 408, or ClientDisconnect."""
        limit, declared = self.limits.max_body_bytes, headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body is {declared} bytes, more than the {limit} allowed",
                           code="request_too_large")
        chunks, size, more = [], 0, True
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnect()
                    chunks.append(message.get("body", b""))
                    size, more = size + len(chunks[-1]), message.get("more_body", False)
                    if size > limit:
                        raise APIError(413, f"request body is more than the {limit} bytes allowed",
                                       code="request_too_large")
        except TimeoutError:
            raise APIError(408, f"request body not received within {self.limits.body_timeout_s:g} s",
                           code="request_timeout") from None
        return b"".join(chunks)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self.refuse(scope, headers)
            if scope["method"] == "POST":
                body = await self.read_body(headers, receive)
                receive = replay(body, receive)
                if "content-type" not in headers:  # read as JSON (curl, scripts), whatever FastAPI's default
                    scope = {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
        except APIError as e:
            return await e.response()(scope, receive, send)
        except ClientDisconnect:  # normal: the client left mid-upload, no one reads an answer
            return None
        return await self.app(scope, receive, send)


def replay(body: bytes, receive):
    """An ASGI ``receive`` that hands over ``body`` (read already), then waits on ``receive``
    (for the client's disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def again():
        return pending.pop() if pending else await receive()
    return again


# --- request bodies (`Body`: strict, no "1" nor true for 1, no NaN; OpenAI's fields gptforge ignores
# are allowed). FastAPI's 422 for a mismatch becomes a 400 naming the field (`validation_error`). ---

class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    """What /v1's two endpoints share: the sampling parameters (``top_k`` as an extra body field)."""

    model: Text
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_k: TopK | None = None
    top_p: TopP = 1.0
    n: Annotated[int, Field(ge=1, le=128)] = 1  # and at most --max-n and --max-batch (`sampling`)
    seed: Annotated[int, Field(ge=0, le=2**63 - 1 - 128)] | None = None
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatRequest(Sampling):
    messages: list  # checked by `check_messages` (its messages name what is wrong in a conversation)


class CompletionRequest(Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]


def validation_error(request, e: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, as a 400 in OpenAI's shape naming the field (``param``)."""
    first = e.errors()[0] if e.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        error = first.get("ctx", {}).get("error", "")
        return APIError(400, f"request body is not valid JSON: {error}", code="invalid_json").response()
    if not loc:  # the body itself: not an object, or absent
        return APIError(400, "request body must be a JSON object", code="invalid_json").response()
    what = f"{json.dumps(first['input'])[:40]}: " if "input" in first and len(loc) == 1 else ""
    return APIError(400, f"{'.'.join(loc)}: {what}{first.get('msg', 'invalid')}", param=loc[0],
                    code="invalid_value").response()


def create_app(models: dict, api_key: str | None = None, limits: Limits | None = None,
               arena_db: str | Path | None = None, host: str = "127.0.0.1", allowed_hosts=(),
               allowed_origins=(), chat_models=None) -> FastAPI:
    """The FastAPI app serving ``models``, name -> (model in eval mode, tokenizer); each model gets a
    Batcher thread. ``api_key``: require ``Authorization: Bearer <api_key>`` on /v1 (401 otherwise).
    ``host``: the address the server binds (loopback: only loopback Host names and ``allowed_hosts``
    are served); ``allowed_origins``: other sites' origins (``https://example.com``) whose pages may
    call it, with CORS headers; see `Guard`. ``chat_models``: the names of the models finetuned on
    conversations (`gptforge serve` reads it from each run; None: every model whose tokenizer has
    the chat tokens).
    ``arena_db``: an SQLite file for the arena's votes, which adds /arena and /arena/leaderboard
    (gptforge.serve.arena; None: no arena). ``app.state.served`` maps names to `Served` (tests read
    the batchers' statistics there).

    Raises:
        UserError: ``arena_db`` cannot be used as an arena database.
    """
    limits = limits or Limits()
    if not models:
        raise ValueError("create_app needs at least one model")
    served = {}
    for name, (m, tok) in models.items():
        batcher = Batcher(m, tok, limits.max_batch, limits.max_queue)
        chat = batcher.chat_tokens is not None and (chat_models is None or name in chat_models)
        served[name] = Served(name, batcher, m.config.block_size, chat)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for s in served.values():  # let the batcher threads end
            s.batcher.stop()

    handlers = {APIError: lambda request, e: e.response(), RequestValidationError: validation_error,
                HTTPException: http_error, Exception: bug}
    app = FastAPI(title="gptforge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  exception_handlers=handlers)
    app.state.served, app.state.limits, app.state.created = served, limits, int(time.time())
    if allowed_origins:  # the browser's preflight and response headers for the origins allowed
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    app.add_middleware(Guard, limits=limits, loopback=is_loopback(host), allowed_hosts=allowed_hosts,
                       allowed_origins=allowed_origins)
    authorize = Depends(authorizer(api_key))
    app.add_api_route("/health", health)
    app.add_api_route("/v1/models", list_models, dependencies=[authorize])
    app.add_api_route("/v1/models/{name}", get_model, dependencies=[authorize])
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], dependencies=[authorize])
    app.add_api_route("/v1/completions", completions, methods=["POST"], dependencies=[authorize])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route("/", lambda: FileResponse(STATIC / "index.html"))
    if arena_db is not None:
        try:
            add_arena(app, served, limits, arena_db, authorize)
        except BaseException:  # e.g. a damaged database: no batcher thread outlives the refusal
            for s in served.values():
                s.batcher.stop()
            raise
    return app


def http_error(request, e: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    return APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=code).response()


def bug(request, e: Exception) -> JSONResponse:
    traceback.print_exception(e, file=sys.stderr)
    return server_error().response()


def authorizer(api_key: str | None):
    """A FastAPI dependency: ``Authorization: Bearer <api_key>`` or 401 (nothing with no key). As a
    dependency it runs before the body is validated: without the key, no word about the body."""
    def authorize(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), api_key.encode())):
            raise APIError(401, "missing or wrong API key (send the header Authorization: Bearer KEY)",
                           code="invalid_api_key", type="authentication_error")
    return authorize


# --- the routes -----------------------------------------------------------------------------------

def model_card(request: Request, s: Served) -> dict:
    return {"id": s.name, "object": "model", "created": request.app.state.created, "owned_by": "gptforge",
            "context_length": s.block_size, "chat": s.chat}


def health(request: Request):
    return {"status": "ok", "models": {n: s.batcher.stats() for n, s in request.app.state.served.items()}}


def list_models(request: Request):
    return {"object": "list", "data": [model_card(request, s) for s in request.app.state.served.values()]}


def get_model(name: str, request: Request):
    return model_card(request, find_model(request.app.state.served, name))


async def chat_completions(body: ChatRequest, request: Request):
    limits = request.app.state.limits
    s = find_model(request.app.state.served, body.model)
    if not s.chat:
        raise APIError(400, f"model {s.name!r} is not a chat model (not finetuned on conversations); use "
                            "/v1/completions", param="model", code="not_a_chat_model")
    messages = check_messages(body.messages, limits)
    max_new = max_tokens(body, s, limits)
    try:
        convo, dropped = fit_context(messages, s.batcher.tok, s.block_size - max_new)
    except UserError as e:
        raise APIError(400, f"{e} (or lower max_tokens)", param="messages",
                       code="context_length_exceeded") from None
    prompt = render_for_completion(convo, s.batcher.tok)
    headers = {"X-Gptforge-Dropped-Messages": str(dropped)}
    return await answer(request, s, prompt, max_new, chat=True, body=body, headers=headers)


async def completions(body: CompletionRequest, request: Request):
    limits = request.app.state.limits
    s = find_model(request.app.state.served, body.model)
    text = body.prompt[0] if isinstance(body.prompt, list) else body.prompt
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
    return await answer(request, s, prompt, max_new, chat=False, body=body)


# --- checking requests ----------------------------------------------------------------------------

def find_model(served: dict[str, Served], name: str) -> Served:
    if name not in served:
        raise APIError(404, f"model {name!r} does not exist; this server has {', '.join(served)}",
                       param="model", code="model_not_found")
    return served[name]


def check_messages(messages: list, limits: Limits) -> list[dict]:
    """OpenAI messages -> a gptforge conversation ending with a user turn. ``developer`` counts as
    ``system``; a user message's content may be a list of ``{"type": "text", "text"}`` parts.

    Raises:
        APIError: 400 naming what is wrong (empty, too many, too long, malformed).
    """
    if not messages:
        raise APIError(400, "messages: expected a non-empty list of messages", param="messages")
    if len(messages) > limits.max_messages:
        raise APIError(400, f"messages: {len(messages)} messages, more than the {limits.max_messages} "
                            "allowed", param="messages")
    out = [openai_message(m, i) for i, m in enumerate(messages, start=1)]
    chars = sum(content_chars(m["content"]) for m in out)
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


def openai_message(m, i: int) -> dict:
    """OpenAI message ``i`` (from 1) as gptforge's ``{"role", "content"}`` (checked afterwards)."""
    if not isinstance(m, dict):
        raise APIError(400, f"messages: message {i} is not an object", param="messages")
    m = {"role": "system" if m.get("role") == "developer" else m.get("role"), "content": m.get("content")}
    c = m["content"]
    if m["role"] in ("user", "system") and isinstance(c, list):  # OpenAI's content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in c):
            raise APIError(400, f"messages: message {i}: only text content parts are supported",
                           param="messages")
        m["content"] = "".join(p["text"] for p in c)
    elif m["role"] == "assistant" and isinstance(c, list):  # gptforge_parts sent back: drop blank text
        m["content"] = [p for p in c if not (isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) and not p["text"].strip())]
    return m


def content_chars(content) -> int:
    """Characters of a message's content: a string, or the text of a list of parts."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return 0


def max_tokens(body, s: Served, limits: Limits) -> int:
    """max_completion_tokens (newer clients) or max_tokens (`max_new_tokens`). Raises APIError 400."""
    name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    return max_new_tokens(getattr(body, name), name, s.block_size, limits.default_max_tokens,
                          f"model {s.name!r}'s context")


# --- answering ----------------------------------------------------------------------------------------

async def answer(request: Request, s: Served, prompt: list[int], max_new: int, *, chat: bool,
                 body: Sampling, headers: dict | None = None) -> Response:
    """Queue the job, one row per choice (``n``) with the request's sampling parameters, then stream
    its events as SSE or collect them into one JSON response. A client that goes away cancels the job
    (its rows stop at the batcher's next step). Raises APIError 400 (``n`` too large) or 429."""
    limits = request.app.state.limits
    most = min(limits.max_n, limits.max_batch)
    if body.n > most:
        raise APIError(400, f"n: {body.n} is more than the {most} choices a request may ask for", param="n",
                       code="invalid_value")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    row = RowParams(max_new=max_new, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                    seed=body.seed, stop=stop)
    events = Inbox(asyncio.get_running_loop())
    job = Job(prompt=prompt, rows=[row] * body.n, chat=chat,
              send=lambda evs: events.put(evs, urgent=any(e.finish for e in evs)))
    try:
        s.batcher.submit(job)
    except QueueFull as e:
        raise APIError(429, f"model {s.name!r} is busy: {e}; retry later", code="queue_full",
                       type="rate_limit_error") from None
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    meta = {"id": rid, "created": int(time.time()), "model": s.name}
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        gen = sse(job, events, meta, chat, len(prompt), usage)
        return StreamingResponse(gen, media_type="text/event-stream", headers=headers)
    try:
        return JSONResponse(await collect(request, job, events, meta, chat, len(prompt)), headers=headers)
    finally:
        job.cancelled = True  # done anyway, or the client left (the handler was cancelled)


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


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
            if await request.is_disconnected():  # (answer's finally cancels the job)
                raise APIError(499, "client closed the request")
        for e in evs:
            texts[e.index] += e.text
            add_part(parts[e.index], e)
            if e.finish is not None:
                if e.finish == "error":
                    raise server_error()
                finish[e.index], tokens = e.finish, tokens + e.tokens
    usage = usage_of(prompt_tokens, tokens)
    if chat:
        choices = [{"index": i, "logprobs": None, "finish_reason": finish[i],
                    "message": {"role": "assistant", "content": texts[i], "gptforge_parts": parts[i]}}
                   for i in range(n)]
        return {**meta, "object": "chat.completion", "choices": choices, "usage": usage}
    choices = [{"index": i, "text": texts[i], "logprobs": None, "finish_reason": finish[i]} for i in range(n)]
    return {**meta, "object": "text_completion", "choices": choices, "usage": usage}


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
                    yield "".join(out) + sse_line(server_error().body())
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
            yield sse_line({**meta, "object": obj, "choices": [], "usage": usage_of(prompt_tokens, tokens)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # finished anyway, or the client went away mid-stream
