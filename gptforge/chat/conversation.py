"""The conversation format and the one function that validates it.

A conversation is a list of messages in the OpenAI / Hugging Face convention, each a dict
``{"role": ..., "content": ...}``:

- ``"system"`` (optional, first message only) and ``"user"``: ``content`` is a str;
- ``"assistant"``: ``content`` is a str, or a list of parts ``{"type": ..., "text": str}`` where
  ``type`` is ``"text"`` (words the user sees), ``"tool_call"`` (a calculator expression such as
  ``123*456`` or ``"strawberry".count("r")``) or ``"tool_output"`` (the calculator's result, e.g.
  ``56088``). Each ``tool_call`` is followed directly by its ``tool_output``, and each
  ``tool_output`` directly follows a ``tool_call``.

After the optional system message, turns alternate user, assistant, user, ... starting with the
user; a training conversation ends with an assistant turn. Example::

    [{"role": "user", "content": "What is 12*34?"},
     {"role": "assistant", "content": [
         {"type": "tool_call", "text": "12*34"},
         {"type": "tool_output", "text": "408"},
         {"type": "text", "text": "12 x 34 = 408."}]}]

Pure Python (no torch), so data tools can use it without loading the model stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "tool_call", "tool_output")


def check_conversation(messages, *, ends_with_assistant: bool = True) -> list[dict]:
    """Validate ``messages`` and return a normalised copy.

    The copy holds new dicts with only the keys ``role`` and ``content`` (other keys, such as a
    ``name`` or a Parquet column's nulls, are dropped); assistant content that is a str stays a
    str; a list of parts becomes a list of ``{"type", "text"}`` dicts. Strings are not stripped
    or otherwise changed. ``messages`` itself is never modified.

    Messages are numbered from 1 in the reasons, counting the system message.

    Args:
        messages: the conversation (a list or tuple of dicts).
        ends_with_assistant: require the last turn to be the assistant's (training data); pass
            False for a prompt that ends with the user's turn.

    Raises:
        ValueError: with a short reason, e.g. ``"empty conversation"``, ``"unknown role 'bot' at
            message 2"``, ``"content of message 2 is not a string"``, ``"two user turns in a row at
            message 3"``, ``"system message not first (message 3)"``, ``"does not end with an
            assistant turn"``, ``"unknown part type 'image' in message 2 part 1"``.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise ValueError(f"conversation is not a list of messages (got {type(messages).__name__})")
    if len(messages) == 0:
        raise ValueError("empty conversation")
    out = []
    expect = "user"  # whose turn comes next, after the optional system message
    for i, msg in enumerate(messages, start=1):
        if not isinstance(msg, Mapping):
            raise ValueError(f"message {i} is not an object (got {type(msg).__name__})")
        role = msg.get("role")
        if role is None:
            raise ValueError(f"message {i} has no role")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} at message {i}")
        if "content" not in msg or msg["content"] is None:
            raise ValueError(f"message {i} has no content")
        content = msg["content"]
        if role == "system":
            if i != 1:
                raise ValueError(f"system message not first (message {i})")
        elif role != expect:
            if i == 1 or (i == 2 and out[0]["role"] == "system"):
                raise ValueError(f"conversation starts with an assistant turn at message {i}, "
                                 "not a user turn")
            raise ValueError(f"two {role} turns in a row at message {i}")
        else:
            expect = "assistant" if role == "user" else "user"
        if role == "assistant" and not isinstance(content, str):
            content = _check_parts(content, i)
        else:
            _check_text(content, f"content of message {i}")
        out.append({"role": role, "content": content})
    if out[-1]["role"] == "system":
        raise ValueError("conversation has a system message and no turns")
    if ends_with_assistant and out[-1]["role"] != "assistant":
        raise ValueError("does not end with an assistant turn")
    return out


def _check_text(s, what: str) -> None:
    """Raise ValueError unless ``s`` is a non-blank str that encodes as UTF-8."""
    if not isinstance(s, str):
        raise ValueError(f"{what} is not a string (got {type(s).__name__})")
    if not s.strip():
        # a blank turn teaches nothing and usually means a broken export
        raise ValueError(f"{what} is empty")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        # valid JSON ("\ud800") but not Unicode text: the tokenizer could not encode it
        raise ValueError(f"{what} holds a lone surrogate (not valid Unicode)") from None


def _check_parts(parts, i: int) -> list[dict]:
    """Validate an assistant message's list of parts; return normalised copies."""
    if not isinstance(parts, Sequence) or isinstance(parts, bytes):
        raise ValueError(f"content of message {i} is neither a string nor a list of parts "
                         f"(got {type(parts).__name__})")
    if len(parts) == 0:
        raise ValueError(f"message {i} has an empty list of parts")
    out = []
    for j, part in enumerate(parts, start=1):
        where = f"message {i} part {j}"
        if not isinstance(part, Mapping):
            raise ValueError(f"{where} is not an object (got {type(part).__name__})")
        kind = part.get("type")
        if kind not in PART_TYPES:
            raise ValueError(f"unknown part type {kind!r} in {where}")
        _check_text(part.get("text"), f"text of {where}")
        prev = out[-1]["type"] if out else None
        if kind == "tool_output" and prev != "tool_call":
            raise ValueError(f"tool_output without a tool_call before it in {where}")
        if prev == "tool_call" and kind != "tool_output":
            raise ValueError(f"tool_call without its tool_output in message {i} part {j - 1}")
        out.append({"type": kind, "text": part["text"]})
    if out[-1]["type"] == "tool_call":
        raise ValueError(f"tool_call without its tool_output in message {i} part {len(out)}")
    return out
