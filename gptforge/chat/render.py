"""Conversations -> token ids and loss masks, with the chat special tokens the BPE tokenizer reserves.

A conversation is a list of messages in the OpenAI / Hugging Face convention, ``{"role": "system" |
"user" | "assistant", "content": ...}``; assistant content is a str or a list of parts
``{"type": "text" | "tool_call" | "tool_output", "text": str}``. It renders as::

    <|endoftext|> <|user_start|> SYSTEM\\n\\nUSER <|user_end|> <|assistant_start|> TEXT
        <|tool_call_start|> EXPR <|tool_call_end|> <|tool_output_start|> RESULT <|tool_output_end|>
        TEXT <|assistant_end|> <|user_start|> ... <|assistant_end|>

``render`` also returns a mask (1 = trained on, 0 = not), nanochat's rules:

- loss on assistant text, tool-call tokens (start, expression, end) and ``<|assistant_end|>``;
- no loss on ``<|endoftext|>``, system and user text (with their start/end tokens),
  ``<|assistant_start|>`` (the prompt asks for it; the model never has to choose it), and tool
  outputs with their start/end tokens (the engine forces them; see gptforge.engine).

A system message has no tokens of its own: its text goes at the start of the first user turn,
followed by a blank line (nanochat does the same), so a model learns one turn structure.
All text is encoded with ``encode_ordinary``: special-token strings typed by a user stay plain text.

    >>> from gptforge.tokenizer import BPETokenizer
    >>> tok = BPETokenizer.train("hello there " * 50, vocab_size=300)
    >>> chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    >>> ids, mask = render(chat, tok)
    >>> [tok.decode([i]) for i, m in zip(ids, mask) if m]  # what the model is trained to say
    ['hello', '<|assistant_end|>']
"""

from __future__ import annotations

from gptforge.errors import UserError
from gptforge.tokenizer import EOT, Tokenizer

CHAT_TOKENS = ("<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
               "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_output_start|>", "<|tool_output_end|>")


class ChatTokens:
    """The ids of the chat special tokens of ``tok`` (attributes ``user_start``, ..., ``eot``).

    Raises:
        UserError: ``tok`` lacks them (a char tokenizer, or an OpenAI encoding: cl100k and o200k
            reserve no chat tokens), naming the missing ones.
    """

    def __init__(self, tok: Tokenizer):
        missing = [s for s in (EOT, *CHAT_TOKENS) if s not in tok.special_tokens]
        if missing:
            raise UserError(f"this {tok.kind} tokenizer has no chat tokens ({', '.join(missing[:3])}"
                            f"{', ...' if len(missing) > 3 else ''}); chat needs a gptforge BPE tokenizer "
                            "(`gptforge tokenizer train`), which reserves them")
        for s in (EOT, *CHAT_TOKENS):
            setattr(self, "eot" if s == EOT else s[2:-2], tok.special_tokens[s])


def _parts(content) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def render(conversation: list[dict], tok: Tokenizer) -> tuple[list[int], list[int]]:
    """``(ids, mask)``, two lists of equal length: the tokens of ``conversation`` and 1 where the
    model is trained to predict that token (see the module docstring for the rules).

    Raises:
        UserError: the tokenizer has no chat tokens.
        ValueError: a message with an unknown role or part type (check conversations first with
            gptforge.chat.conversation).
    """
    t = ChatTokens(tok)
    ids, mask = [t.eot], [0]

    def add(tokens: list[int], trained: int):
        ids.extend(tokens)
        mask.extend([trained] * len(tokens))

    messages = list(conversation)
    system = ""
    if messages and messages[0]["role"] == "system":
        system = messages.pop(0)["content"] + "\n\n"
    for i, m in enumerate(messages):
        if m["role"] == "user":
            text = (system if i == 0 else "") + m["content"]
            add([t.user_start, *tok.encode_ordinary(text), t.user_end], 0)
        elif m["role"] == "assistant":
            add([t.assistant_start], 0)
            for part in _parts(m["content"]):
                kind, text = part["type"], part["text"]
                if kind == "text":
                    add(tok.encode_ordinary(text), 1)
                elif kind == "tool_call":
                    add([t.tool_call_start, *tok.encode_ordinary(text), t.tool_call_end], 1)
                elif kind == "tool_output":
                    add([t.tool_output_start, *tok.encode_ordinary(text), t.tool_output_end], 0)
                else:
                    raise ValueError(f"unknown part type {kind!r} in message {i}")
            add([t.assistant_end], 1)
        else:
            raise ValueError(f"unknown role {m['role']!r} in message {i}")
    return ids, mask


def render_for_completion(conversation: list[dict], tok: Tokenizer) -> list[int]:
    """The prompt that asks the model for the next assistant turn: ``conversation`` (ending with
    a user turn; a trailing assistant turn is dropped, to be generated again) rendered, then
    ``<|assistant_start|>``.

    Raises:
        UserError: the tokenizer has no chat tokens.
    """
    messages = list(conversation)
    if messages and messages[-1]["role"] == "assistant":
        messages.pop()
    ids, _ = render(messages, tok)
    return ids + [ChatTokens(tok).assistant_start]
