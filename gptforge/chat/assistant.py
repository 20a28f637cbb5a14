"""Talking to a chat model: fit a conversation into its context, then generate the next assistant
turn with the calculator tool, as a stream of typed pieces.

    for piece in respond(model, tok, conversation, temperature=0):
        print(piece.kind, piece.text)    # "text" pieces as they come; "tool_call" / "tool_output" whole

``fit_context`` drops the oldest turns (never the system message, never the newest user turn)
until the prompt leaves room for the reply, and says how many it dropped, so a long chat goes on
instead of failing at the context limit.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gptforge.chat.render import ChatTokens, render_for_completion
from gptforge.engine import ToolUse, generate_stream
from gptforge.errors import UserError
from gptforge.tokenizer import Tokenizer


@dataclass
class Piece:
    """A piece of an assistant turn: ``kind`` is "text" (a chunk of streamed text), "tool_call"
    (the whole expression) or "tool_output" (the tool's whole result)."""

    kind: str
    text: str

    def shown(self) -> str:
        """As a transcript shows it: the text, or ``[calculator: 12*34`` then `` = 408]``."""
        return {"tool_call": f"[calculator: {self.text}", "tool_output": f" = {self.text}]"}.get(
            self.kind, self.text)


def fit_context(conversation: list[dict], tok: Tokenizer, budget: int) -> tuple[list[dict], int]:
    """``(conversation, dropped)``: the newest turns whose completion prompt is at most ``budget``
    tokens; ``dropped`` counts the user and assistant messages left out from the start. A system
    message is kept.

    Raises:
        UserError: even the newest user turn alone (with the system message) is over ``budget``.
    """
    system = [m for m in conversation[:1] if m["role"] == "system"]
    rest = conversation[len(system):]
    for start in range(len(rest)):
        if rest[start]["role"] != "user":
            continue
        kept = system + rest[start:]
        if len(render_for_completion(kept, tok)) <= budget:
            return kept, start
    n = len(render_for_completion(system + rest[-1:], tok)) if rest else 0
    raise UserError(f"the message is {n} tokens with the chat tokens, more than the {budget} the model's "
                    "context leaves for it; shorten it")


def respond(model: torch.nn.Module, tok: Tokenizer, conversation: list[dict], max_new_tokens: int = 256,
            *, temperature: float = 0.6, top_k: int | None = 50, top_p: float = 1.0, seed: int | None = None,
            tools: bool = True, use_cache: bool = True, direct: bool = False,
            ended: list | None = None) -> Iterator[Piece]:
    """Generate the next assistant turn of ``conversation`` (which ends with a user turn and must
    already fit the context: see ``fit_context``). Yields Pieces until ``<|assistant_end|>`` or
    ``max_new_tokens``; with ``tools`` the engine runs tool calls and forces their output;
    ``direct`` never lets the model call a tool (it must answer by itself). ``ended``, when
    given, gets True appended if the turn ended with ``<|assistant_end|>``, else False.

    Raises:
        UserError: the tokenizer has no chat tokens, or sampling settings out of range.
    """
    t = ChatTokens(tok)
    prompt = render_for_completion(conversation, tok)
    turn, produced, stopped = TurnDecoder(tok), 0, False
    for step in generate_stream(model, [prompt], max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed, stop_tokens=[t.assistant_end],
                                use_cache=use_cache, tool=ToolUse.from_tokenizer(tok) if tools else None,
                                banned=[t.tool_call_start] if direct else ()):
        i = step[0]
        if i is None:  # the stop token (<|assistant_end|>) is not yielded: the turn is complete
            stopped = produced < max_new_tokens
            continue
        produced += 1
        if i == t.eot:  # a document boundary: not a proper end of a turn, but the end of this one
            break
        yield from turn.feed(i)
    yield from turn.finish()
    if ended is not None:
        ended.append(stopped)


class TurnDecoder:
    """Token ids of an assistant turn -> Pieces, one token at a time: text as soon as it is whole
    UTF-8 (an incremental decoder holds back a partial multi-byte character, so a character is
    never split across pieces), a tool call or output whole at its end token. ``respond`` and the
    server's batcher (one per row) share it. ``tools=False``: text only, as the server's plain
    completions want (a base model's tokenizer has no chat tokens)."""

    def __init__(self, tok: Tokenizer, tools: bool = True):
        self.tok, self.t = tok, ChatTokens(tok) if tools else None
        self.mode, self.buf = "text", []
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, i: int) -> list[Piece]:
        """The pieces completed by token ``i`` (often none, at most two)."""
        t, out = self.t, []
        if t is not None and i in (t.tool_call_start, t.tool_output_start):
            out = self.finish()
            self.mode, self.buf = ("tool_call" if i == t.tool_call_start else "tool_output"), []
        elif t is not None and i in (t.tool_call_end, t.tool_output_end):
            out = [Piece(self.mode, self.tok.decode(self.buf))]
            self.mode, self.buf = "text", []
        elif self.mode == "text":
            text = self.dec.decode(self.tok.decode_bytes([i]))
            if text:
                out = [Piece("text", text)]
        else:
            self.buf.append(i)
        return out

    def finish(self) -> list[Piece]:
        """The text held back at the end of the turn (an incomplete character becomes U+FFFD)."""
        tail = self.dec.decode(b"", final=True)
        return [Piece("text", tail)] if tail else []


def as_message(pieces: list[Piece]) -> dict:
    """The assistant message for the history: a str when it is all text, else a list of parts
    (consecutive text pieces joined)."""
    parts: list[dict] = []
    for p in pieces:
        if p.kind == "text" and parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += p.text
        else:
            parts.append({"type": p.kind, "text": p.text})
    if all(p["type"] == "text" for p in parts):
        return {"role": "assistant", "content": "".join(p["text"] for p in parts)}
    return {"role": "assistant", "content": parts}
