"""Typed settings: one parser for every ``KEY=VALUE`` flag, TOML file and JSON value.

A config is a plain ``@dataclass`` whose fields say, once, what they accept: the type annotation
(``int``, ``float``, ``bool``, ``str``, ``dict``, or one of them ``| None``) and, through
``setting()``, the help text, the choices and the bounds. Everything else follows from that:

- ``convert(cls, name, value)`` turns a command-line string or a TOML/JSON value into the declared
  type and checks it: bools take true/false/yes/no/on/off/1/0 (any case), optional fields take
  none/null, numbers must be finite and inside their bounds, strings one of their choices;
- ``overrides(cls, ["n_embd=128", "bias=false"])`` and ``load_toml(path)`` use it;
- ``check(obj)`` re-validates every field of an instance (configs call it in ``__post_init__``,
  so the Python API gets the same checks as the command line);
- the CLI builds each command's flags and ``--help`` from ``specs(cls)`` (gptforge/cli/flags.py).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Cfg:
    ...     lr: float = setting(3e-3, "peak learning rate", gt=0)
    ...     bias: bool = setting(True, "biases in Linear layers")
    >>> overrides(Cfg, ["lr=1e-2", "bias=No"])
    {'lr': 0.01, 'bias': False}

Every mistake is one ``UserError`` naming where it came from, the key, the value and what was
expected, e.g. ``--model: bias='maybe': expected a boolean (true/false, yes/no, on/off, 1/0)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import tomllib
import types
import typing
from pathlib import Path

from gptforge.errors import UserError
from gptforge.io import read_file

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null")


def setting(default=dataclasses.MISSING, help: str = "", *, choices: tuple | None = None, ge=None, gt=None,
            le=None, lt=None, default_factory=dataclasses.MISSING, metavar: str | None = None):
    """A dataclass field with its help text, allowed choices and numeric bounds.

    ``ge``/``gt``/``le``/``lt``: inclusive/exclusive lower and upper bounds (numbers only).
    ``metavar``: how the CLI shows the value (default: from the type or the choices).
    """
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "metavar": metavar}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one field accepts: ``type`` is int, float, bool, str or dict; ``optional``: None allowed."""

    name: str
    type: type
    optional: bool
    default: object
    help: str = ""  # these from ``setting()``'s metadata (a plain field has none)
    choices: tuple | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    metavar: str | None = None

    def expected(self) -> str:
        """What a valid value looks like, in words (for error messages and --help)."""
        if self.choices:
            what = "one of " + ", ".join(map(str, self.choices))
        else:
            what = {int: "an integer", float: "a finite number", bool: "a boolean (true/false, yes/no, "
                    "on/off, 1/0)", str: "a string", dict: "a table of KEY = VALUE"}[self.type]
        bounds = [f"{op} {v}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                  if v is not None]
        if bounds:
            what += " " + " and ".join(bounds)
        return what + (", or none" if self.optional else "")


@functools.cache
def specs(cls: type) -> dict[str, Spec]:
    """``{field name: Spec}`` for a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        typ, optional = hints[f.name], False
        if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
            args = [a for a in typing.get_args(typ) if a is not type(None)]
            typ, optional = args[0], len(args) < len(typing.get_args(typ))
        typ = typing.get_origin(typ) or typ  # dict[str, int] -> dict
        if typ not in (int, float, bool, str, dict):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported setting type {typ!r}")
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out[f.name] = Spec(f.name, typ, optional, default, **f.metadata)
    return out


def spec(cls: type, name: str, where: str = "config") -> Spec:
    """The Spec of field ``name``; an unknown name is a UserError with the closest valid key."""
    all_specs = specs(cls)
    if name not in all_specs:
        close = difflib.get_close_matches(name, all_specs, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(all_specs)}"
        raise UserError(f"{where}: unknown key {name!r}{hint}")
    return all_specs[name]


def convert(cls: type, name: str, value, where: str = "config", as_flag: bool = False):
    """``value`` (a command-line string, or a TOML/JSON value) as field ``name`` of ``cls`` declares it.

    ``as_flag``: the value came from the flag ``--name`` (error messages say so).

    Raises:
        UserError: unknown key, a value of the wrong type, a non-finite number, or a value outside
            the field's choices or bounds; the message names ``where``, the key and the value.
    """
    s = spec(cls, name, where)
    try:
        return _adapter(cls, name).validate_python(_from_text(s, value))
    except ValueError:  # what int()/float() raise for a bad string, and pydantic's ValidationError
        if as_flag:
            raise UserError(f"--{name.replace('_', '-')} {value}: expected {s.expected()}") from None
        raise UserError(f"{where}: {name}={value!r}: expected {s.expected()}") from None


def _from_text(s: Spec, v):
    """A string (command line, or TOML) parsed as the field's type says: none/null, the boolean
    words, integers with ``_`` separators; JSON/TOML's 0 and 1 as booleans; other values unchanged."""
    if s.type is bool and type(v) is int and v in (0, 1):
        return bool(v)
    if not isinstance(v, str) or s.type is str:
        return v
    t = v.strip().lower()
    if t in _NONE:
        return None
    if s.type is bool:
        return True if t in _TRUE else False if t in _FALSE else v
    return int(t.replace("_", ""), 10) if s.type is int else float(t) if s.type is float else v


@functools.cache
def _adapter(cls: type, name: str):
    """A pydantic validator of field ``name``: its exact type (strict: no bool for an int, no "1" for
    a number), finite, inside its bounds and choices, or None if optional."""
    from pydantic import Field, TypeAdapter  # here, not at the top: `--help` needs only specs()

    s = specs(cls)[name]
    finite = {"allow_inf_nan": False} if s.type is float else {}
    typ = typing.Literal[s.choices] if s.choices else typing.Annotated[
        s.type, Field(strict=True, ge=s.ge, gt=s.gt, le=s.le, lt=s.lt, **finite)]
    return TypeAdapter(typ | None if s.optional else typ)


def check(obj, where: str | None = None) -> None:
    """Convert and check every field of a config instance in place (int -> float, "true" -> True...).

    Raises:
        UserError: the first field whose value ``convert`` refuses.
    """
    cls = type(obj)
    where = where or cls.__name__
    for name in specs(cls):
        setattr(obj, name, convert(cls, name, getattr(obj, name), where))


def overrides(cls: type, items: list[str], where: str = "--model") -> dict:
    """``["n_embd=128", "bias=false"]`` -> ``{"n_embd": 128, "bias": False}``, typed by ``cls``'s fields.

    Raises:
        UserError: an item without ``=`` or key, an unknown key or a value ``convert`` refuses.
    """
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{where}: expected KEY=VALUE, got {item!r}")
        values[key.strip()] = value.strip()
    return convert_all(cls, values, where)


def convert_all(cls: type, values: dict, where: str = "config") -> dict:
    """``values`` converted key by key as ``cls``'s fields declare (``convert``): e.g. a TOML
    ``[model]`` table or JSON ``{"bias": "false", "logit_softcap": "none"}`` -> ``{"bias": False,
    "logit_softcap": None}``.

    Raises:
        UserError: an unknown key or a value ``convert`` refuses.
    """
    return {k: convert(cls, k, v, where) for k, v in values.items()}


def load_toml(path: str | Path) -> dict:
    """The top-level table of a TOML file (values not yet checked: see ``convert``).

    Raises:
        UserError: missing, unreadable, not UTF-8 or not TOML; the message names the path.
    """
    raw = read_file(path, "TOML config file")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid TOML file ({e})") from None
