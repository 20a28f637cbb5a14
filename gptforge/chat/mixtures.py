"""Built-in conversation sets for finetuning, each with a fixed train/test split.

``mixture(name, split, n, seed)`` yields conversations (see ``gptforge.chat.conversation``):

- ``arithmetic``: integer +, -, x, exact /, integer division ``//`` and remainder ``%`` (both said
  in words), bare and as short word problems, operands of up to ``max_digits`` digits (default 4).
  The assistant writes the expression as a ``tool_call``, the calculator's result follows as the
  ``tool_output``, then a ``text`` part gives the answer. Questions are composed, not listed: a
  phrasing family (operation words: plus/add/sum/total/and, minus/subtract/take away/difference/
  less, times/multiply/product/of, divided by/split/quotient/share; word order; a noun phrase in
  a frame such as "Could you work out {x} for me?", or a sentence of its own), numbers up to 100
  sometimes in words, then decoration (a preamble such as "Quick question:", a thank-you, lower
  case, missing punctuation).
- ``spelling``: count a letter in a word (``"strawberry".count("r")``), a word's length
  (``len("word")``), or spell it out, over the lower-case words of the public-domain ``web2`` list
  (Webster's Second) shipped by the ``english-words`` package (MIT). Letter counts are asked in 14
  forms, the word bare or quoted, decorated as arithmetic is.
- ``identity``: who the assistant is and what it can and cannot do, in gptforge's own words, and
  greetings, thanks and requests it cannot serve (a poem, facts), each answered shortly in kind
  and never with a tool call (``IDENTITY``; ``IDENTITY_KEYWORDS`` says what each topic's answers say).
- ``smalltalk``: English dialogues from the ``chatterbot-corpus`` package (BSD), minus the
  categories that give the bot another persona or teach code (see ``SMALLTALK_CATEGORIES``).
- ``gsm8k``: the GSM8K training set (``train.jsonl`` in ``gsm8k_dir``, by default
  ``../shared/data/evals/gsm8k`` beside the repository); each ``<<expr=result>>`` annotation
  becomes a tool_call / tool_output pair and the solution ends with ``#### answer``. Only
  ``train.jsonl`` is ever opened: this mixture's test split is a held-out part of GSM8K *train*,
  and the real GSM8K test file stays untouched for evaluation.

Splits: every item has a canonical key (the expression with + and x operands sorted, the word, the
normalised question, the GSM8K problem text), and ``split_of(name, key)`` assigns it by a stable hash
of the key, ``TEST_FRACTION`` of keys to ``"test"``. The split never depends on the seed, the
position or ``n``, so no test item can appear in any training stream, whatever seeds are used.

Phrasing families: arithmetic and letter-count questions also have a family (``"arithmetic:+:sum"``,
``"count:how_often"``), and the families in ``HELD_OUT`` are asked only in the test split (the
other families only in the train split), so the test split measures phrasings never trained on.
``gptforge.chat.tasks`` draws test items in either kind of phrasing (template-seen or -unseen).

Determinism: the same ``(name, split, n, seed, options)`` give the same conversations, on any
machine (``random.Random`` seeded with a string, no ``hash()``).

Every conversation is passed through ``check_conversation`` before it is yielded, and every tool
expression is accepted by ``calculate``: numbers, ``+ - * / // % **``, parentheses, unary minus,
``"word".count("x")`` and ``len("word")``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from functools import cache
from itertools import islice
from pathlib import Path

import gptforge
from gptforge.chat.conversation import check_conversation
from gptforge.errors import UserError
from gptforge.tools import calculator

SPLITS = ("train", "test")
TEST_FRACTION = 0.1  # of keys; a mixture's test split holds about this share of its items

# ---------------------------------------------------------------------------------------------
# the calculator the tool calls are written for

def calculate(expression: str) -> str:
    """The calculator tool's answer to ``expression`` (gptforge.tools.calculator), as the tool_output
    text: the training data shows the model exactly what the engine will force in at inference.

    Raises:
        ValueError: the calculator refuses the expression (its "error: ..." text).
    """
    result = calculator(expression)
    if result.startswith("error:"):
        raise ValueError(result)
    return result


# ---------------------------------------------------------------------------------------------
# splits and the public entry points

def split_of(name: str, key: str) -> str:
    """``"train"`` or ``"test"`` for the item of mixture ``name`` whose canonical key is ``key``.

    A stable hash (blake2b of name and key), independent of seed, position and machine.
    """
    digest = hashlib.blake2b(f"{name}\0{key}".encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") < TEST_FRACTION * 2**64 else "train"


def mixture(name: str, split: str = "train", n: int | None = None, seed: int = 0,
            **options) -> Iterator[list[dict]]:
    """Conversations of the built-in mixture ``name`` (one of ``MIXTURES``).

    Args:
        name: ``"arithmetic"``, ``"spelling"``, ``"identity"``, ``"smalltalk"`` or ``"gsm8k"``.
        split: ``"train"`` or ``"test"`` (disjoint by canonical key; see the module docstring).
        n: how many conversations. ``None``: every item of the split once, in a seeded order, for
            the finite sets (identity, smalltalk, gsm8k), and an endless stream for the generated
            ones (arithmetic, spelling). A finite set asked for more than it holds starts again
            in a new order.
        seed: order and generated content; any int.
        options: per mixture: ``max_digits`` (arithmetic, 1 to 4, default 4), ``gsm8k_dir``
            (gsm8k: the directory holding ``train.jsonl``), ``categories`` (smalltalk),
            ``phrasings`` (arithmetic, spelling: ``"train"`` or ``"test"`` phrasing families;
            default those of ``split``).

    Raises:
        UserError: unknown name; gsm8k's ``train.jsonl`` missing or unreadable.
        ValueError: bad split, n or option value.

    Example::

        >>> conv = next(mixture("arithmetic", "train", n=1, seed=0, max_digits=3))
        >>> conv[0]["content"]
        'The quotient of 237 and 237 = ?'
        >>> [(part["type"], part["text"]) for part in conv[1]["content"]]
        [('tool_call', '237/237'), ('tool_output', '1'), ('text', '237 / 237 = 1.')]
    """
    if name not in _BUILDERS:
        raise UserError(f"unknown mixture {name!r} (choose from {', '.join(MIXTURES)})")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, not {n}")
    stream = _BUILDERS[name](split, seed, repeat=n is not None, **options)
    return stream if n is None else islice(stream, n)


def _shuffled(name: str, items: list[tuple[str, list[dict]]], split: str, seed: int,
              repeat: bool) -> Iterator[list[dict]]:
    """The items of ``split`` in a seeded order, once or (``repeat``) pass after pass."""
    pool = [conv for key, conv in items if split_of(name, key) == split]
    rng = random.Random(f"{name}:{split}:{seed}")
    while pool:
        order = pool[:]
        rng.shuffle(order)
        for conv in order:
            yield check_conversation(conv)  # also a fresh copy: callers may change what they get
        if not repeat:
            return


def generated_items(name: str, split: str, seed: int,
                    make: Callable[[random.Random], tuple[str, list[dict], str]]
                    ) -> Iterator[tuple[list[dict], str]]:
    """Endless stream of ``(conversation, family)`` of the ``make(rng) -> (key, conversation,
    family)`` items whose key falls in ``split`` (others, and conversations None, are dropped)."""
    rng = random.Random(f"{name}:{split}:{seed}")
    while True:
        key, conv, family = make(rng)
        if conv is not None and split_of(name, key) == split:
            yield check_conversation(conv), family


def _norm(text: str) -> str:
    """Canonical form of a question: lower case, words only (so "Who are you?" == "who are you")."""
    return " ".join(re.findall(r"[a-z0-9']+", text.casefold()))


def _assistant(*parts: tuple[str, str]) -> dict:
    return {"role": "assistant", "content": [{"type": t, "text": s} for t, s in parts]}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


# ---------------------------------------------------------------------------------------------
# arithmetic

_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kofi",
          "Lena", "Mia", "Noah", "Omar", "Priya", "Sam", "Tara", "Yusuf", "Zoe")
_THINGS = ("apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "stamps", "coins",
           "eggs", "shells", "beads")

# A question is composed: a phrasing (the family: a noun phrase set in a frame, "What is {x}?", or a
# sentence of its own), numbers as digits or words, then decoration (a preamble, politeness, lower
# case, missing punctuation). Families in HELD_OUT are asked only in the test split, so the test
# measures phrasings never trained on; frames, operation words and decoration occur in both.
_NOUN = {  # op -> (name, noun phrase); "-" phrases other than minus/sign get a >= b
    "+": (("plus", "{a} plus {b}"), ("sign", "{a} + {b}"), ("sum", "the sum of {a} and {b}"),
          ("total", "the total of {a} and {b}"), ("together", "{a} and {b} together"),
          ("added_to", "{b} added to {a}"), ("increased", "{a} increased by {b}")),
    "-": (("minus", "{a} minus {b}"), ("sign", "{a} - {b}"),
          ("difference", "the difference between {a} and {b}"), ("less_than", "{b} less than {a}"),
          ("less", "{a} less {b}"), ("take_away", "{a} take away {b}"),
          ("decreased", "{a} decreased by {b}")),
    "*": (("times", "{a} times {b}"), ("sign_x", "{a} x {b}"), ("sign", "{a} * {b}"),
          ("product", "the product of {a} and {b}"), ("multiplied", "{a} multiplied by {b}"),
          ("lots_of", "{a} lots of {b}"), ("groups_of", "{a} groups of {b}")),
    "/": (("divided", "{a} divided by {b}"), ("sign", "{a} / {b}"),
          ("quotient", "the quotient of {a} and {b}"), ("over", "{a} over {b}"),
          ("split_ways", "{a} split {b} ways")),
}
_SENTENCE = {  # op -> (name, a whole question); // and % always say they are integer division
    "+": (("add", "Add {a} and {b}."), ("add_to", "Add {b} to {a}."), ("sum_up", "Sum up {a} and {b}."),
          ("more", "If I have {a} and get {b} more, how many do I have?")),
    "-": (("subtract", "Subtract {b} from {a}."), ("take", "Take {b} away from {a}."),
          ("left", "If I have {a} and give away {b}, how many are left?")),
    "*": (("multiply", "Multiply {a} by {b}."), ("multiply_together", "Multiply {a} and {b} together.")),
    "/": (("divide", "Divide {a} by {b}."),
          ("split", "Split {a} into {b} equal parts. How big is each part?"),
          ("share", "Share {a} equally between {b} people. How much does each get?")),
    "//": (("floor_sign", "What is {a} // {b} (integer division, rounded down)?"),
           ("rounded", "What is {a} divided by {b}, rounded down to a whole number?"),
           ("whole_times", "How many whole times does {b} go into {a}?"),
           ("integer", "Integer division: what is {a} divided by {b}, without the remainder?")),
    "%": (("remainder", "What is the remainder when {a} is divided by {b}?"), ("mod", "What is {a} mod {b}?"),
          ("sign", "What is {a} % {b}?"), ("left_over", "What is left over when you divide {a} by {b}?")),
}
_FRAMES = ("What is {x}?", "What's {x}?", "Calculate {x}.", "Compute {x}.", "Work out {x}.", "{x}?",
           "{x} = ?", "How much is {x}?", "Find {x}.", "Tell me {x}.", "Could you work out {x} for me?",
           "Can you tell me {x}?", "Please calculate {x}.", "I need {x}.", "Do you know {x}?",
           "What do you get for {x}?")
_PREAMBLES = ("Quick question: ", "Hey, ", "Hi! ", "Question: ", "Math question: ", "Hello, ",
              "Help me out: ", "OK, ", "I have a question. ", "Here's one: ", "Hi there. ")
_POLITE = (" Please.", " Thanks!", " Thank you.", " Thanks in advance.", " Cheers.")
# op -> (family name, question, answer) of word problems; a and b are at least 2, and a >= b for "-"
_WORD = {
    "+": (("word_has", "{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?",
           "{name} has {r} {things} now."),
          ("word_shop", "A shop sold {a} {things} on Monday and {b} on Tuesday. How many {things} did it "
           "sell in total?", "It sold {r} {things} in total.")),
    "-": (("word_gave", "{name} had {a} {things} and gave away {b}. How many {things} are left?",
           "{name} has {r} {things} left."),
          ("word_box", "A box holds {a} {things}. {name} takes out {b} of them. How many {things} are still "
           "in the box?", "{r} {things} are still in the box.")),
    "*": (("word_bags", "There are {a} bags with {b} {things} in each bag. How many {things} are there "
           "altogether?", "There are {r} {things} altogether."),
          ("word_packs", "{name} buys {a} packs of {b} {things}. How many {things} does {name} buy?",
           "{name} buys {r} {things}.")),
    "/": (("word_friends", "{a} {things} are shared equally among {b} friends. How many {things} does each "
           "friend get?", "Each friend gets {r} {things}."),),
    "//": (("word_boxes", "{name} packs {a} {things} into boxes of {b}. How many boxes can {name} fill "
            "completely?", "{name} can fill {r} boxes completely."),),
    "%": (("word_left", "{name} packs {a} {things} into boxes of {b}. How many {things} are left over?",
           "{r} {things} are left over."),),
}
_SAY = {
    "+": ("{a} + {b} = {r}.", "The sum is {r}.", "{r}", "The answer is {r}."),
    "-": ("{a} - {b} = {r}.", "The difference is {r}.", "{r}", "The answer is {r}."),
    "*": ("{a} x {b} = {r}.", "The product is {r}.", "{r}", "The answer is {r}."),
    "/": ("{a} / {b} = {r}.", "{a} divided by {b} is {r}.", "{r}", "The answer is {r}."),
    "//": ("{a} divided by {b} is {r}, rounded down.", "{b} goes into {a} {r} whole times.",
           "Rounded down, the answer is {r}."),
    "%": ("The remainder is {r}.", "{a} mod {b} is {r}.", "{r} is left over."),
}
# families asked only in the test split: about a quarter per operation, each with its operation
# word seen in training in another family ("total" in "sell in total", "multiplied" beside "multiply")
HELD_OUT = frozenset({
    "arithmetic:+:total", "arithmetic:+:increased", "arithmetic:+:add_to", "arithmetic:+:word_has",
    "arithmetic:-:less", "arithmetic:-:take_away", "arithmetic:-:left", "arithmetic:-:word_box",
    "arithmetic:*:multiplied", "arithmetic:*:groups_of", "arithmetic:*:multiply_together",
    "arithmetic:*:word_packs",
    "arithmetic:/:over", "arithmetic:/:split",
    "arithmetic://:integer", "arithmetic:%:left_over",
    "count:number_of", "count:count_the", "count:what_count", "count:shows_up",
})
_OPS = ("+", "-", "*", "/", "//", "%")
_PY_OPS = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": lambda a, b: a // b,  # exact
           "//": int.__floordiv__, "%": int.__mod__}
_OP_WEIGHTS = (3, 3, 3, 2, 1, 1)
_INTROS = ("Let me calculate that.", "I'll use the calculator.", "Let me work that out.")
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """0 <= n <= 100 in English words: 7 -> "seven", 42 -> "forty-two", 100 -> "one hundred".

    Raises:
        ValueError: n outside 0..100.
    """
    if not 0 <= n <= 100:
        raise ValueError(f"number_words covers 0 to 100, not {n}")
    if n == 100:
        return "one hundred"
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens - 2] + (f"-{_ONES[ones]}" if ones else "")


def family_split(family: str) -> str:
    """``"test"`` for a held-out phrasing family (``HELD_OUT``), else ``"train"``."""
    return "test" if family in HELD_OUT else "train"


def _pick_family(rng: random.Random, names: list[str], phrasings: str) -> str | None:
    """A family of ``names`` whose split is ``phrasings``, or None when none is."""
    pool = [f for f in names if family_split(f) == phrasings]
    return rng.choice(pool) if pool else None


def decorate(rng: random.Random, question: str) -> str:
    """A user question as people type it: sometimes a preamble ("Quick question: "), a thank-you,
    all lower case, or no final punctuation. The same decoration in both splits."""
    if rng.random() < 0.2:
        first = question.split(" ", 1)[0]
        lower = first in _NAMES or first.isupper()  # "Priya", "I": capitals that stay
        question = rng.choice(_PREAMBLES) + (question if lower else question[0].lower() + question[1:])
    if rng.random() < 0.12:
        question += rng.choice(_POLITE)
    if rng.random() < 0.2:
        question = question.lower()
    if rng.random() < 0.2:
        question = question.rstrip("?.!")
    return question


def _operand(rng: random.Random, max_digits: int) -> int:
    """An int of 1..max_digits digits, the digit count uniform so small numbers are common too."""
    d = rng.randint(1, max_digits)
    return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)


def _say_number(rng: random.Random, n: int) -> str:
    """``n`` in digits, or (a quarter of the time, up to 100) in words."""
    return number_words(n) if n <= 100 and rng.random() < 0.25 else str(n)


def arithmetic_problem(rng: random.Random, max_digits: int = 4, phrasings: str = "train",
                       split: str | None = None) -> tuple[str, list[dict] | None, str]:
    """One arithmetic conversation: ``(key, conversation, family)``; the key is the expression with
    + and * operands sorted, the family names the phrasing (``"arithmetic:+:sum"``), drawn from the
    families of split ``phrasings`` (see ``HELD_OUT``). With ``split``, an item whose key falls in
    the other split comes back with conversation None, before any text is written (cheap to skip).

    Operands are non-negative ints of at most ``max_digits`` digits, written in the question as
    digits or, up to 100, in words; the tool call always has digits. ``/`` is always exact (the
    dividend is a multiple of the divisor), ``//`` and ``%`` are asked as integer division and
    remainder in words. Results of ``-`` may be negative ("5 minus 9").
    """
    family = None
    while family is None:  # until the drawn kind of question has a family of split `phrasings`
        op = rng.choices(_OPS, weights=_OP_WEIGHTS)[0]
        a, b = _operand(rng, max_digits), _operand(rng, max_digits)
        if op == "/":
            b = max(b, 1)
            a = b * rng.randint(0, (10**max_digits - 1) // b)  # exact, and still max_digits digits
        elif op in ("//", "%"):
            b = max(b, 2)
        word = rng.random() < 0.3 and a >= 2 and b >= 2
        if word and op == "-" and a < b:
            a, b = b, a  # "gave away more than they had" is no word problem
        word = word and _PY_OPS[op](a, b) != 1  # "1 apples" reads badly
        if word:
            forms = {f"arithmetic:{op}:{name}": (q, ans) for name, q, ans in _WORD[op]}
        elif op in _NOUN and rng.random() < 0.65:
            forms = {f"arithmetic:{op}:{name}": ("{x}", t) for name, t in _NOUN[op]}
        else:
            forms = {f"arithmetic:{op}:{name}": (t, None) for name, t in _SENTENCE[op]}
        family = _pick_family(rng, list(forms), phrasings)
    if op == "-" and a < b and not family.endswith((":minus", ":sign")):
        a, b = b, a  # "the difference between 3 and 9", "9 less than 3": no
    expression = f"{a}{op}{b}"
    key = f"{min(a, b)}{op}{max(a, b)}" if op in "+*" else expression
    if split is not None and split_of("arithmetic", key) != split:
        return key, None, family
    result = calculate(expression)
    template, answer = forms[family]
    if word:
        fill = {"a": a, "b": b, "r": result, "name": rng.choice(_NAMES), "things": rng.choice(_THINGS)}
        question, answer = template.format(**fill), answer.format(**fill)
    else:
        if template == "{x}":  # a noun phrase in a frame
            template = rng.choice(_FRAMES).replace("{x}", answer)
        question = template.format(a=_say_number(rng, a), b=_say_number(rng, b))
        question = question[0].upper() + question[1:]
        answer = rng.choice(_SAY[op]).format(a=a, b=b, r=result)
    parts = [("tool_call", expression), ("tool_output", result), ("text", answer)]
    if rng.random() < 0.25:
        parts.insert(0, ("text", rng.choice(_INTROS)))
    return key, [_user(decorate(rng, question)), _assistant(*parts)], family


def _arithmetic(split: str, seed: int, repeat: bool, max_digits: int = 4, phrasings: str | None = None
                ) -> Iterator[list[dict]]:
    if not (isinstance(max_digits, int) and 1 <= max_digits <= 4):
        raise ValueError(f"max_digits must be 1, 2, 3 or 4, not {max_digits!r}")
    make = lambda rng: arithmetic_problem(rng, max_digits, phrasings or split, split)
    return (conv for conv, _ in generated_items("arithmetic", split, seed, make))


# ---------------------------------------------------------------------------------------------
# spelling

@cache
def spelling_words() -> tuple[str, ...]:
    """Sorted lower-case a-z words of 3 to 12 letters from ``english-words``' ``web2`` list.

    web2 (Webster's Second International, 1934) is public domain; the package is MIT. Its other
    list, GCIDE, is left out because the GNU dictionary it indexes is GPL. Capitalised entries
    (proper nouns) are dropped.
    """
    from english_words import get_english_words_set

    words = get_english_words_set(["web2"], alpha=True, lower=False)
    return tuple(sorted(w for w in words if 3 <= len(w) <= 12 and re.fullmatch(r"[a-z]+", w)))


# letter counting asked in many forms (family "count:NAME"); {w} is the word, bare or quoted
_COUNT_ASK = (
    ("how_many_s", "How many {L}'s are in {w}?"),
    ("times_letter", "How many times does the letter {L} appear in {w}?"),
    ("are_there", "How many {L} are there in {w}?"),
    ("count_letter", "Count the letter {L} in the word {w}."),
    ("occur", "In the word {w}, how many times does {L} occur?"), ("terse", "how many {L} in {w}"),
    ("how_often", "How often does {L} appear in the word {w}?"), ("colon", "{w}: how many {L}s?"),
    ("does_have", "How many {L}s does {w} have?"), ("any", "Does {w} have any {L}'s? How many?"),
    ("number_of", "Number of {L}'s in {w}?"), ("count_the", "Count the {L}'s in {w}."),
    ("what_count", "What is the count of the letter {L} in {w}?"),
    ("shows_up", "Tell me how many times {L} shows up in {w}."),
)
_LEN_ASK = ("How many letters are in the word {w}?", "How long is the word {w}?",
            "What is the length of {w} in letters?", "Count the letters in {w}.")
_SPELL_ASK = ("How do you spell {w}?", "Spell {w} letter by letter.", "Can you spell the word {w}?",
              "Spell out {w}.")


def _times(r: int) -> str:
    return {1: "once", 2: "twice"}.get(r, f"{r} times")


def spelling_problem(rng: random.Random, words: tuple[str, ...] | None = None, phrasings: str = "train"
                     ) -> tuple[str, list[dict], str]:
    """One letter-count, length or spelling conversation: ``(key, conversation, family)``; the key is
    the word, the family the phrasing (``"count:how_often"``, ``"len"``, ``"spell"``), a letter-count
    family drawn from the split ``phrasings`` (see ``HELD_OUT``; lengths and spelling are train
    phrasings only, so the test split holds letter counts alone)."""
    w = rng.choice(words or spelling_words())
    spelled = "-".join(w)
    kind = "count" if phrasings == "test" else rng.choices(("count", "len", "spell"), weights=(6, 2, 2))[0]
    said = rng.choice((w, w, f'"{w}"', f"'{w}'"))
    if kind == "count":
        # mostly a letter of the word, sometimes any letter, so 0 is a possible answer
        letter = rng.choice(w) if rng.random() < 0.7 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        expression = f'"{w}".count("{letter}")'
        r = w.count(letter)
        forms = {f"count:{name}": t for name, t in _COUNT_ASK}
        family = _pick_family(rng, list(forms), phrasings)
        question = forms[family].format(L=letter, w=said)
        answer = rng.choice((f"The letter {letter} appears {_times(r)} in \"{w}\"." if r else
                             f"The letter {letter} does not appear in \"{w}\".",
                             f"There is 1 {letter} in {w}." if r == 1 else
                             f"There are {r} {letter}'s in {w}.",
                             f"{r}"))
        intro = rng.choice(("", f"{w} is spelled {spelled}. Let me count with the calculator.",
                            "Let me count with the calculator."))
    elif kind == "len":
        expression, r, family = f'len("{w}")', len(w), "len"
        question = rng.choice(_LEN_ASK).format(w=said)
        answer = rng.choice((f"\"{w}\" has {r} letters.", f"{w} is {r} letters long.", f"{r}"))
        intro = rng.choice(("", f"{w} is spelled {spelled}."))
    else:
        expression, r, family = f'len("{w}")', len(w), "spell"
        question = rng.choice(_SPELL_ASK).format(w=said)
        intro = f"{w} is spelled {spelled}."
        answer = f"That's {r} letters."
    parts = [("tool_call", expression), ("tool_output", str(r)), ("text", answer)]
    if intro:
        parts.insert(0, ("text", intro))
    return w, [_user(decorate(rng, question)), _assistant(*parts)], family


def _spelling(split: str, seed: int, repeat: bool, phrasings: str | None = None) -> Iterator[list[dict]]:
    words = spelling_words()
    make = lambda rng: spelling_problem(rng, words, phrasings or split)
    return (conv for conv, _ in generated_items("spelling", split, seed, make))


# ---------------------------------------------------------------------------------------------
# identity

# topic -> (questions, answers); every question of a topic is paired with every answer of it
IDENTITY: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "who": (
        ("Who are you?", "What are you?", "What is your name?", "Introduce yourself.",
         "Are you a human?", "Are you a person or a computer?", "Tell me about yourself."),
        ("I'm a small assistant language model trained with gptforge, an open-source project that "
         "builds a GPT from scratch. I'm not a person: I predict text one token at a time.",
         "I'm a small AI assistant built with gptforge. I was trained on an ordinary CPU, so I'm much "
         "smaller than the big chat models, but I can chat a little and do arithmetic with my calculator.")),
    "made": (
        ("Who made you?", "Who created you?", "How were you trained?", "How were you made?",
         "Where do you come from?"),
        ("I was made with gptforge: a byte-pair tokenizer, pretraining on plain text, then finetuning "
         "on conversations like this one, all run on a CPU.",
         "gptforge trained me, step by step on a CPU: first to predict text, then to answer in "
         "conversations and to use a calculator tool.")),
    "can": (
        ("What can you do?", "How can you help me?", "What are you good at?", "What can I ask you?",
         "What are your skills?"),
        ("I can chat a little, solve arithmetic with whole numbers, work through short word problems, "
         "and count letters in words. For the numbers I call a calculator tool, so those are usually "
         "right.",
         "Simple things: small talk, +, -, x and / on integers, short math word problems, and "
         "counting or spelling letters in a word. I use a calculator tool for the computing part.")),
    "math": (
        ("Can you do math?", "Are you good at arithmetic?", "Can you multiply big numbers?",
         "How do you do sums?", "Do you use a calculator?"),
        ("Yes, with help: I write the expression for a calculator tool, such as 123*456, and read "
         "its result, 56088. Doing it in my head I would often get it wrong.",
         "I can do arithmetic by calling a calculator tool with the expression and then reporting "
         "its answer. Long word problems are harder for me, so check those.")),
    "letters": (
        ("Can you count letters?", "Can you spell words?", "How many r's are in strawberry? Can you do that?",
         "Why do you use a tool to count letters?"),
        ("Yes. I see words as tokens rather than letters, so I ask the calculator, for example "
         "\"strawberry\".count(\"r\") gives 3.",
         "I can, with my calculator tool: len(\"word\") for a length and \"word\".count(\"x\") for a "
         "letter count, because on my own I don't see the single letters.")),
    "limits": (
        ("What are your limits?", "What can't you do?", "What are your weaknesses?", "Are you always right?",
         "Do you make mistakes?", "Can I trust your answers?"),
        ("I'm a small model, so I make mistakes, sometimes confidently. Please check anything important. "
         "I have no internet access, and I only know what was in my training data.",
         "I often get things wrong, especially facts and long reasoning. I can't browse the internet "
         "and I have no tools besides a calculator.")),
    "internet": (
        ("Can you browse the internet?", "Do you have internet access?", "Can you look something up online?",
         "What's the weather today?", "What is the latest news?", "What time is it?"),
        ("I have no internet access, so I can't look things up or know today's news, weather or time. "
         "I only know what was in my training data.",
         "Sorry, I can't check that: I'm not connected to the internet or to a clock, only to a "
         "calculator.")),
    "feelings": (
        ("Do you have feelings?", "Are you conscious?", "Do you remember our last conversation?",
         "Are you alive?"),
        ("No. I'm a small language model that predicts text; I don't have feelings, and I don't "
         "remember past conversations.",
         "I'm a program trained with gptforge, not a being: no feelings, no memories between "
         "conversations.")),
    "hardware": (
        ("Do you need a GPU?", "What computer do you run on?", "How big are you?"),
        ("I was trained with gptforge on a CPU and I'm small enough to run on one too.",
         "I'm a small model: gptforge trained me on an ordinary CPU, no big GPU cluster needed.")),
}


_CREATIVE = [form.format(kind=kind, about=about)
             for form in ("Write a {kind} about {about}.", "Can you write me a {kind} about {about}?",
                          "Compose a {kind} about {about}.")
             for kind in ("poem", "short story", "song", "haiku")
             for about in ("the sea", "love", "cats", "autumn", "the moon")]
_FACTS = ([f"What is the capital of {c}?" for c in ("France", "Japan", "Peru", "Kenya", "Canada", "Norway")]
          + [f"Who wrote {b}?" for b in ("Hamlet", "War and Peace", "Don Quixote", "Pride and Prejudice")]
          + [f"Who invented the {t}?" for t in ("telephone", "light bulb", "printing press")]
          + [f"How tall is {m}?" for m in ("Mount Everest", "the Eiffel Tower")]
          + [f"What is the population of {c}?" for c in ("Tokyo", "Lagos", "Brazil")]
          + ["When did World War II end?", "Who was the first person on the moon?",
             "What is the largest animal on Earth?", "Who painted the Mona Lisa?",
             "What language do they speak in Brazil?", "How far away is the sun?"])
# topics that are not about the assistant itself: greetings and thanks get the same in kind, and
# requests it cannot serve a short no (never a tool call: there is nothing to compute)
IDENTITY.update({
    "greeting": (
        ("Hello!", "Hi", "Hey there!", "Good morning!", "Good evening.", "Good afternoon", "Hi, how are you?",
         "Hello, how are you doing?", "Hey!", "Greetings!", "Howdy!", "Hiya", "Morning!", "Hello there",
         "Hi there, nice to meet you.", "Hey, what's up?"),
        ("Hello! I'm a small assistant: I can do arithmetic and count the letters in a word. What would "
         "you like to know?",
         "Hi! How can I help you today?",
         "Hello there! Ask me a sum, or how many times a letter appears in a word.")),
    "thanks": (
        ("Thanks!", "Thank you.", "Thanks a lot!", "Thank you so much.", "Cheers!", "Great, thanks!",
         "Perfect, thank you.", "Thanks for your help.", "Much appreciated.", "That's helpful, thanks.",
         "Awesome, thank you!", "Nice, thanks"),
        ("You're welcome!", "You're welcome! Anything else I can do?", "Glad I could help.",
         "No problem, happy to help!")),
    "creative": (
        tuple(_CREATIVE),
        ("Sorry, I can't do creative writing like that: I'm a small model. I can do arithmetic or count "
         "the letters in a word for you.",
         "Sorry, I'm not able to write that well; I'm a small model. Try me on a sum or a letter count "
         "instead.")),
    "facts": (
        tuple(_FACTS),
        ("Sorry, I don't know that reliably. I'm a small model with no internet access, so I might make "
         "it up; please check a reliable source.",
         "I'm not sure, sorry: my knowledge of facts is weak and I can't look things up. I can do "
         "arithmetic and count letters, though.")),
})
# topic -> what every answer of it says (lower case, a regex): the check of an answer "in kind"
IDENTITY_KEYWORDS = {
    "who": r"assistant|language model|gptforge", "made": r"gptforge|trained", "can": r"arithmetic|calculator",
    "math": r"calculator|arithmetic", "letters": r"calculator|tool", "limits": r"mistakes|wrong",
    "internet": r"internet", "feelings": r"feelings|not a being", "hardware": r"cpu",
    "greeting": r"\b(hello|hi|hey)\b", "thanks": r"welcome|glad|happy to help",
    "creative": r"sorry|can't|not able", "facts": r"sorry|don't know|not sure",
}


@cache
def identity_topic_items() -> tuple[tuple[str, list[dict], str], ...]:
    """Every ``(key, conversation, topic)`` of ``identity``: each question of a topic (a key of
    ``IDENTITY``) with each of its answers, also asked in lower case without punctuation; the key is
    the normalised question."""
    return tuple((_norm(q), [_user(asked), {"role": "assistant", "content": answer}], topic)
                 for topic, (questions, answers) in IDENTITY.items() for q in questions
                 for asked in (q, _norm(q)) for answer in answers)


def _identity(split: str, seed: int, repeat: bool) -> Iterator[list[dict]]:
    return _shuffled("identity", [(k, conv) for k, conv, _ in identity_topic_items()], split, seed, repeat)


# ---------------------------------------------------------------------------------------------
# smalltalk

# chatterbot-corpus English categories (file stems) used by default. Left out: ai and botprofile
# (the bot claims another persona: a favourite number, eating RAM), coding (long code, some of it
# wrong), tech_support (1050 one-line fixes would swamp the chat) and trivia (facts a small model
# would only learn to guess).
SMALLTALK_CATEGORIES = ("computers", "conversations", "emotion", "food", "gossip", "greetings", "health",
                        "history", "humor", "literature", "money", "movies", "politics", "psychology",
                        "science", "sports")


@cache
def smalltalk_items(categories: tuple[str, ...] = SMALLTALK_CATEGORIES) -> list[tuple[str, list[dict]]]:
    """(key, conversation) from chatterbot-corpus's English YAML files; key: the normalised first
    user message (so every reply to one opening line lands in the same split).

    Each dialogue alternates user, assistant from its first line; a dialogue with an odd number of
    lines loses its last (user) line so it ends with the assistant. Dialogues that open with a
    question of the identity mixture are left out (it answers those, in gptforge's words), bar
    greetings and thanks (a "Hi" to a "Hello" agrees with it).

    Raises:
        UserError: a category has no file in the installed package.
    """
    import yaml
    from chatterbot_corpus.corpus import DATA_DIRECTORY

    items, seen = [], set()
    own = {key for key, _, topic in identity_topic_items() if topic not in ("greeting", "thanks")}
    for cat in categories:
        path = Path(DATA_DIRECTORY) / "english" / f"{cat}.yml"
        if not path.is_file():
            raise UserError(f"smalltalk category {cat!r}: no file {path} in chatterbot-corpus")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for lines in data.get("conversations", []):
            lines = [s.strip() for s in lines if isinstance(s, str) and s.strip()]
            lines = lines[: len(lines) // 2 * 2]
            # a few dialogues appear in two categories; "Who are you?" gets gptforge's answer, not a persona's
            if not lines or tuple(lines) in seen or _norm(lines[0]) in own:
                continue
            seen.add(tuple(lines))
            conv = [{"role": ("user", "assistant")[i % 2], "content": s} for i, s in enumerate(lines)]
            items.append((_norm(lines[0]), conv))
    return items


def _smalltalk(split: str, seed: int, repeat: bool, categories=SMALLTALK_CATEGORIES) -> Iterator[list[dict]]:
    return _shuffled("smalltalk", smalltalk_items(tuple(categories)), split, seed, repeat)


# ---------------------------------------------------------------------------------------------
# gsm8k

def default_gsm8k_dir() -> Path:
    """``../shared/data/evals/gsm8k`` beside the repository (where developers and CI keep it)."""
    return Path(gptforge.__file__).resolve().parents[1].parent / "shared" / "data" / "evals" / "gsm8k"


_ANNOTATION = re.compile(r"<<([^<>]*)>>")


def gsm8k_conversation(question: str, answer: str) -> list[dict] | None:
    """A GSM8K problem as a conversation, or None when an annotation is not a calculator expression
    or its stated result disagrees with the calculator (the problem is then left out).

    ``"48/2 = <<48/2=24>>24 clips.\\n#### 24"`` becomes the parts text ``"48/2 = "``, tool_call
    ``"48/2"``, tool_output ``"24"``, text ``"24 clips.\\n#### 24"``: the prose keeps the number
    after the annotation, so it reads whole even with the tool parts hidden. Commas are removed from
    the final answer (``#### 1,200`` -> ``#### 1200``).
    """
    body, sep, final = answer.rpartition("#### ")
    if not sep:
        return None
    parts: list[tuple[str, str]] = []

    def text(s: str) -> None:  # never two in a row: a tool_output comes between
        if s.strip():
            parts.append(("text", s))

    pos = 0
    for m in _ANNOTATION.finditer(body):
        text(body[pos:m.start()])
        expression, eq, stated = m.group(1).rpartition("=")
        if not eq:
            return None
        try:
            result = calculate(expression)
            if not math.isclose(float(result), float(stated.replace(",", "")), rel_tol=1e-6, abs_tol=1e-6):
                return None
        except ValueError:  # also float() of a stated result that is no number
            return None
        parts += [("tool_call", expression.strip()), ("tool_output", result)]
        pos = m.end()
    text(body[pos:] + "#### " + final.strip().replace(",", ""))
    return [_user(question.strip()), _assistant(*parts)]


@cache
def _gsm8k_items_cached(path: str, mtime_ns: int, size: int) -> list[tuple[str, list[dict]]]:
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, answer = row["question"], row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{lineno}: not a GSM8K row (a JSON object with "
                                "\"question\" and \"answer\")") from None
            conv = gsm8k_conversation(question, answer)
            if conv is not None:
                items.append((" ".join(question.split()), conv))
    return items


def gsm8k_items(gsm8k_dir: str | Path | None = None) -> list[tuple[str, list[dict]]]:
    """(key, conversation) for the GSM8K training problems in ``gsm8k_dir/train.jsonl``; the key is
    the question with its whitespace collapsed. Problems ``gsm8k_conversation`` refuses are left
    out (none in the usual copy, bar a dozen with a unary plus). Never opens ``test.jsonl``.

    Raises:
        UserError: ``train.jsonl`` is missing or a line is not a GSM8K row.
    """
    path = Path(gsm8k_dir) if gsm8k_dir is not None else default_gsm8k_dir()
    train = path / "train.jsonl"
    try:
        st = train.stat()
    except OSError:
        raise UserError(f"{train}: GSM8K training set not found (grade-school math problems, one JSON "
                        "object with \"question\" and \"answer\" per line; pass gsm8k_dir=... to "
                        "give its directory)") from None
    return _gsm8k_items_cached(str(train), st.st_mtime_ns, st.st_size)


def _gsm8k(split: str, seed: int, repeat: bool, gsm8k_dir: str | Path | None = None) -> Iterator[list[dict]]:
    return _shuffled("gsm8k", gsm8k_items(gsm8k_dir), split, seed, repeat)


# name -> builder(split, seed, repeat, **options); the order is MIXTURES'
_BUILDERS: dict[str, Callable[..., Iterator[list[dict]]]] = {
    "arithmetic": _arithmetic,
    "spelling": _spelling,
    "identity": _identity,
    "smalltalk": _smalltalk,
    "gsm8k": _gsm8k,
}
MIXTURES: tuple[str, ...] = tuple(_BUILDERS)
