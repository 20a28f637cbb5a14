"""Tools the assistant may call while it generates; today one: a safe calculator.

The model writes ``<|tool_call_start|>12*3<|tool_call_end|>``; the engine (``gptforge.engine.ToolUse``)
decodes the text between the two tokens, calls the tool, and forces the answer back in as
``<|tool_output_start|>36<|tool_output_end|>``.

    >>> calculator("12*3")
    '36'
    >>> calculator("6/3"), calculator("1/3"), calculator("2**0.5")
    ('2', '0.333333333333', '1.41421356237')
    >>> calculator('"strawberry".count("r") + len("abc")')
    '6'
    >>> calculator("9**9**9")
    'error: result too large'
    >>> calculator("__import__('os')")
    'error: unsupported expression (Call)'

The text comes from a model and so is untrusted: nothing is ever passed to ``eval``/``exec``. The
expression is parsed with ``ast`` and walked over a whitelist, with every size bounded *before* it
is computed, so a call returns a string within milliseconds whatever the input.

Standard library only (the bottom of the import layers).
"""

from __future__ import annotations

import ast
import math
import operator
import warnings

MAX_CHARS = 200  # longest expression accepted
MAX_NODES = 300  # AST nodes, operator nodes included (a sum of n terms has 3n - 1)
MAX_DEPTH = 100  # AST nesting (also the recursion depth of the evaluator)
MAX_MAGNITUDE = 10**30  # |operand| and |result| bound, ints and floats alike
MAX_LOG10 = 30  # a power is refused when log10|base| * exponent exceeds this: |result| > 10**30
MAX_OUTPUT = 64  # characters in a result (bounds hold it far lower; a last guard)
SIGNIFICANT = 12  # digits a float result is rounded to

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}

Number = int | float


class _Refused(Exception):
    """An expression the calculator will not compute; the message is the error text shown."""


def calculator(expr: str) -> str:
    """Evaluate an arithmetic expression written by the model; never raises.

    Accepted: int and float literals, ``+ - * / // % **``, parentheses, unary ``-``/``+``, and two
    string forms, ``"word".count("r")`` and ``len("word")``, whose strings must be literals.

    Args:
        expr: the expression, at most ``MAX_CHARS`` (200) characters; surrounding whitespace ignored.
    Returns:
        the value as text, at most ``MAX_OUTPUT`` (64) characters. Ints are written in full (at most
        31 digits); floats are rounded to 12 significant digits with ``format(x, ".12g")``, which
        drops trailing zeros and a bare ``.0`` (``6/3`` -> ``2``, ``1/3`` -> ``0.333333333333``,
        ``0.1+0.2`` -> ``0.3``, ``1e20*1`` -> ``1e+20``). Anything refused gives a string starting
        with ``error: ``: unsupported syntax, too long / too deep, a number or result beyond
        ``10**30``, division by zero, a complex or non-finite result.

    Example (a worked call):
        ``calculator("(2+3)*4 - 7//2")``: parsed to BinOp(BinOp(2+3) * 4) - BinOp(7 // 2), every node
        whitelisted, 5*4 = 20, 7//2 = 3, 20 - 3 = 17 -> ``'17'``.
    """
    try:
        return _format(_evaluate(_parse(expr)))
    except _Refused as e:
        return f"error: {e}"
    except ZeroDivisionError:
        return "error: division by zero"
    except Exception as e:  # the bounds should make this unreachable; a tool must still never raise
        return f"error: {type(e).__name__}"


def _parse(expr: str) -> ast.expr:
    """The expression's AST, within the size bounds.

    Raises:
        _Refused: not a string, too long, empty, not valid Python, too many nodes or too deep.
    """
    if not isinstance(expr, str):
        raise _Refused("not a string")
    if len(expr) > MAX_CHARS:  # before parsing: the parser's own cost grows with the input
        raise _Refused(f"expression too long (over {MAX_CHARS} characters)")
    expr = expr.strip()  # the model may pad with spaces; ast rejects a leading indent
    if not expr:
        raise _Refused("empty expression")
    try:
        with warnings.catch_warnings():  # "3x" is a syntax warning before it is an error: never print it
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: a NUL byte
        raise _Refused("syntax error") from None
    # depth first, iteratively: a recursive walk of a hostile tree is what the bound guards against
    stack = [(tree, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            raise _Refused("expression too complex")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree


def _evaluate(node: ast.expr) -> Number:
    """Value of a whitelisted node (recursion depth <= MAX_DEPTH, checked by ``_parse``).

    Raises:
        _Refused: an unsupported node, or a number out of bounds.
        ZeroDivisionError: ``/``, ``//`` or ``%`` by zero, or 0 to a negative power.
    """
    if isinstance(node, ast.Constant):
        # bool is an int subclass; True/False are names to the model, not numbers
        if type(node.value) not in (int, float):
            raise _Refused(f"unsupported expression ({type(node.value).__name__} literal)")
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINOPS[type(node.op)](left, right))
    if isinstance(node, ast.Call):
        return _string_call(node)
    raise _Refused(f"unsupported expression ({type(node).__name__})")


def _string_call(node: ast.Call) -> int:
    """``"word".count("r")`` or ``len("word")``, literals only.

    Raises:
        _Refused: any other call.
    """
    if not node.keywords and len(node.args) == 1 and _is_str(node.args[0]):
        arg = node.args[0].value
        func = node.func
        if isinstance(func, ast.Name) and func.id == "len":
            return len(arg)
        if isinstance(func, ast.Attribute) and func.attr == "count" and _is_str(func.value):
            return func.value.value.count(arg)  # at most MAX_CHARS long: linear and cheap
    raise _Refused("unsupported expression (Call)")


def _is_str(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is str


def _check_power(base: Number, exp: Number) -> None:
    """Refuse ``base ** exp`` before computing it when ``|result| > 10**MAX_LOG10`` would follow.

    |base ** exp| = 10 ** (log10|base| * exp); bases 0 and +-1 cannot grow, whatever the exponent.

    Raises:
        _Refused: the result would be too large.
        ZeroDivisionError: 0 to a negative power.
    """
    if base == 0 and exp < 0:
        raise ZeroDivisionError
    if abs(base) not in (0, 1) and math.log10(abs(base)) * exp > MAX_LOG10:
        raise _Refused("result too large")


def _bounded(x: Number | complex) -> Number:
    """x itself when it is a real, finite number with |x| <= MAX_MAGNITUDE.

    Raises:
        _Refused: complex (a negative base to a fractional power), nan or inf, or too large.
    """
    if isinstance(x, complex):
        raise _Refused("complex result")
    if isinstance(x, float) and not math.isfinite(x):
        raise _Refused("result too large" if math.isinf(x) else "not a number")
    if abs(x) > MAX_MAGNITUDE:
        raise _Refused("number too large")
    return x


def _format(x: Number) -> str:
    """Ints in full; floats to SIGNIFICANT digits, trailing zeros and a bare '.0' dropped; -0 as 0.

    Raises:
        _Refused: longer than MAX_OUTPUT (unreachable within the bounds; a last guard).
    """
    # + 0.0 turns -0.0 into 0.0
    text = format(x + 0.0, f".{SIGNIFICANT}g") if isinstance(x, float) else str(x)
    if len(text) > MAX_OUTPUT:
        raise _Refused("result too long")
    return text
