"""Verifiable chat tasks: held-out items and the checker that scores a reply, shared by evaluation
(`gptforge.eval.chat`), the oracle arena and training on rewards.

    >>> for prompt, reference, family in items("arithmetic", "test", 100, phrasings="test"):
    ...     reply = ...                         # message parts from the model
    ...     ok = reply_correct("arithmetic", reply, reference)

Tasks:

- ``arithmetic``: the arithmetic mixture's questions (`gptforge.chat.mixtures`, operands of up to
  ``max_digits`` digits, default 3); reference: the calculator's result; right when the last number
  of the reply's text equals it.
- ``letter_count``: the spelling mixture's letter-count questions; right when the reply's last count
  equals it, in digits or as the mixture's answers say it ("once", "twice", "does not appear").
- ``social``: greetings, thanks, questions about the assistant and requests it cannot serve (a
  poem, facts it does not know), from the identity mixture; reference: the topic (``greeting``,
  ``creative``...); right when the reply calls no tool and says what that topic's answers say
  (``IDENTITY_KEYWORDS``).
- ``gsm8k`` (checker only; its items are GSM8K's test file, read by `gptforge.eval.chat`): the
  number after ``####``, else the last number.

Items come from the mixtures' ``split`` of item keys (expressions, words, questions), so ``"test"``
items are never trained on. ``phrasings`` picks the phrasing families: ``"train"`` (template-seen:
the phrasings SFT trains on) or ``"test"`` (template-unseen: the held-out families of
``mixtures.HELD_OUT``, asked only in the test split); by default those of ``split``. Each item is
``(prompt, reference, family)``: the prompt a conversation of one user turn.
"""

from __future__ import annotations

import random
import re
from itertools import islice

from gptforge.chat.mixtures import (
    IDENTITY_KEYWORDS,
    SPLITS,
    arithmetic_problem,
    family_split,
    generated_items,
    identity_topic_items,
    spelling_problem,
    spelling_words,
    split_of,
)

TASKS = ("arithmetic", "letter_count", "social")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
GSM8K_ANSWER = re.compile(r"####\s*(-?\d+(?:\.\d+)?)")

Item = tuple[list[dict], str, str]  # (prompt conversation, reference answer, phrasing family)


def items(task: str, split: str = "test", n: int = 200, seed: int = 1, phrasings: str | None = None,
          max_digits: int = 3, calls: bool = False) -> list[Item]:
    """The first ``n`` items of ``task`` in ``split`` (fewer when the split holds fewer: social),
    in a seeded order; see the module docstring for ``phrasings``. ``calls``: the reference of an
    arithmetic or letter-count item is its calculator call (``"berry".count("r")``), not the result.

    Raises:
        ValueError: an unknown task, split or phrasings, or n < 0.
    """
    phrasings = phrasings or split
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    if split not in SPLITS or phrasings not in SPLITS:
        raise ValueError(f"split and phrasings must be 'train' or 'test', not {split!r}, {phrasings!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if task == "social":  # each distinct question of the split once (its first answer), seeded order
        seen, out = set(), []
        for key, conv, topic in identity_topic_items():
            if split_of("identity", key) == split and conv[0]["content"] not in seen:
                seen.add(conv[0]["content"])
                out.append(([conv[0]], topic, f"identity:{topic}"))
        random.Random(f"social:{split}:{seed}").shuffle(out)
        return out[:n]
    if task == "arithmetic":
        stream = generated_items("arithmetic", split, seed,
                                 lambda rng: arithmetic_problem(rng, max_digits, phrasings, split))
    else:
        words = spelling_words()
        stream = (x for x in generated_items("spelling", split, seed,
                                             lambda rng: spelling_problem(rng, words, phrasings))
                  if x[1].startswith("count:"))
    part = "tool_call" if calls else "tool_output"
    return [([conv[0]], [p["text"] for p in conv[-1]["content"] if p["type"] == part][-1], family)
            for conv, family in islice(stream, n)]


def held_out(family: str) -> bool:
    """Whether a phrasing family is asked only in the test split (template-unseen)."""
    return family_split(family) == "test"


# ---------------------------------------------------------------------------------------------
# scoring

def last_number(text: str) -> str | None:
    """The last number written in ``text`` (thousands commas removed), or None."""
    found = NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


# the letter-count answers say small counts in words ("appears twice", "does not appear")
COUNT = re.compile(r"-?\d+|\b(once|twice|not appear)\b", re.IGNORECASE)
COUNT_WORDS = {"once": "1", "twice": "2", "not appear": "0"}


def last_count(text: str) -> str | None:
    """The last count written in ``text``, in digits or as the letter-count answers say it ("once",
    "twice", "does not appear"), as digits; None when there is none."""
    found = list(COUNT.finditer(text.replace(",", "")))
    if not found:
        return None
    word = found[-1].group(1)
    return COUNT_WORDS[word.lower()] if word else found[-1].group(0)


def gsm8k_answer(text: str) -> str | None:
    """The number after the last ``####`` in ``text``, else its last number, else None."""
    found = GSM8K_ANSWER.findall(text.replace(",", ""))
    return found[-1] if found else last_number(text)


def same_number(a: str | None, b: str) -> bool:
    """``a`` and ``b`` are the same number (to 1e-6); False when ``a`` is None or not a number."""
    try:
        return a is not None and abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return False


def text_of(parts: list[dict]) -> str:
    """The reply's own words: its text parts joined (tool calls and outputs left out)."""
    return "".join(p["text"] for p in parts if p["type"] == "text")


def reply_correct(task: str, parts: list[dict], reference: str) -> bool:
    """Whether a reply (message parts: ``{"type": "text" | "tool_call" | "tool_output", "text"}``)
    answers an item of ``task`` right (module docstring); ``reference`` is the item's.

    Raises:
        KeyError: a social item whose reference is not an identity topic.
    """
    text = text_of(parts)
    if task == "social":
        no_tool = not any(p["type"] == "tool_call" for p in parts)
        return no_tool and re.search(IDENTITY_KEYWORDS[reference], text.lower()) is not None
    if task == "gsm8k":
        return same_number(gsm8k_answer(text), reference)
    return same_number(last_count(text) if task == "letter_count" else last_number(text), reference)
