"""What the server's app and its arena share: the static pages' folder, the stream pacing, the error
type answered as OpenAI's error JSON, a served model, the request bodies' base and field types, and the
server-sent events' pieces. Both serve/app.py and serve/arena.py build on it (neither imports the other's
internals)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gptforge.serve.batcher import Batcher, Event

STATIC = Path(__file__).parent / "static"
# A stream writes at most once per STREAM_INTERVAL seconds (everything decoded meanwhile goes in one
# write; the first token and a row's end are never held back): waking the event loop for every token
# of a small model slowed decoding on 2 cores (bench/README.md, serve.py). 20 ms is below what a
# reader of streamed text can see.
STREAM_INTERVAL = 0.02


class APIError(Exception):
    """An error answered as OpenAI's error JSON with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def server_error() -> APIError:
    """A bug (a row's failure in the batcher, or an exception in a route): 500, details in the log."""
    return APIError(500, "internal server error (see the server's log)", type="server_error")


@dataclass
class Served:
    """A model the server offers: its batcher, context size and whether it is a chat model
    (finetuned on conversations: only then /v1/chat/completions and the arena take it)."""

    name: str
    batcher: Batcher
    block_size: int
    chat: bool


# request bodies (pydantic): strict, no NaN or infinity; fields OpenAI has and gptforge ignores are allowed
class Body(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")


Text = Annotated[str, Field(min_length=1)]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopK = Annotated[int, Field(ge=1, le=1 << 24)]
TopP = Annotated[float, Field(gt=0, le=1)]
MaxTokens = Annotated[int, Field(ge=1, le=1 << 30)]


def max_new_tokens(n: int | None, name: str, context: int, default: int, whose: str) -> int:
    """A reply's token budget: ``n`` (the request's field ``name``), else ``default`` but at most half
    the ``context``. Raises APIError 400 when ``n`` leaves no room for a prompt (the shortest chat
    prompt is about 5 tokens); ``whose`` names the context in the message."""
    if n is None:
        return min(default, context // 2)
    if n > context - 8:
        raise APIError(400, f"{name}: {n} is beyond {whose} of {context} tokens (at most {context - 8})",
                       param=name, code="context_length_exceeded")
    return n


def add_part(parts: list[dict], e: Event) -> None:
    """Append event ``e`` to a reply's list of parts (consecutive text joined; markers left out)."""
    if e.part is not None:
        parts.append(dict(e.part))
    elif e.text and parts and parts[-1]["type"] == "text":
        parts[-1]["text"] += e.text
    elif e.text:
        parts.append({"type": "text", "text": e.text})


def sse_line(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
