"""One evaluation run over any mix of tasks: what `gptforge eval` and the speedrun's report call.

    >>> plan = resolve_tasks("core,chat:gsm8k,bpb")
    >>> result = evaluate(model, tok, plan, limit=100)
    >>> print(format_table(result))

Task names (`resolve_tasks`): the groups ``core`` (the CORE tasks of `gptforge.eval.core`, base
models), ``chat`` (the scored and answered chat tasks of `gptforge.eval.chat`, SFT models) and
``bpb`` (bits per byte on a shard directory or a text file); a CORE label (``arc_easy``,
``piqa``...) names a CORE task; a chat task name that is not a CORE label (``gsm8k``,
``humaneval``, ``arithmetic``, ``letter_count``, ``mt_bench``) names that chat task. ``core:NAME``
and ``chat:NAME`` say which one explicitly (``chat:arc_easy`` is ARC as lettered multiple choice
in a chat; ``arc_easy`` alone is the CORE task).

The result (`evaluate`) is one JSON-ready dict: per task n, accuracy, its 95% Wilson interval
(``ci95``, `gptforge.eval.stats`), centered (centred accuracy), baseline, seconds, per-item
correctness (``correct``, 0/1 in item order) with the items' fingerprint (``items``), so two
models' results can be compared with a paired test (and "examples" on request), the CORE mean
over the CORE tasks run, the ChatCORE mean over the chat tasks run, and the CORE tasks whose file
is missing, by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptforge.errors import UserError
from gptforge.eval import bpb, chat, core
from gptforge.eval.chat import TASKS as CHAT_TASKS
from gptforge.eval.core import CORE_TASKS
from gptforge.eval.files import default_data_dir
from gptforge.eval.stats import add_interval, format_interval

GROUPS = ("core", "chat", "bpb")


@dataclass
class Plan:
    """Which tasks to run: CORE labels, chat task names, and whether to measure bits per byte.
    ``core_all``: the whole ``core`` group was asked for (its missing files are then reported,
    not an error)."""

    core: list[str] = field(default_factory=list)
    chat: list[str] = field(default_factory=list)
    bpb: bool = False
    core_all: bool = False


def resolve_tasks(spec: str) -> Plan:
    """Parse a comma-separated task list (module docstring) into a Plan; duplicates are dropped.

    Raises:
        UserError: an empty list or an unknown name (the message lists what exists).
    """
    core_labels = [t.label for t in CORE_TASKS]
    plan = Plan()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError("--tasks is empty; give core, chat, bpb or task names")
    for name in names:
        kind, _, bare = name.rpartition(":")
        if name == "core":
            plan.core_all = True
            plan.core += [t for t in core_labels if t not in plan.core]
        elif name == "chat":
            plan.chat += [t for t in CHAT_TASKS if t not in plan.chat]
        elif name == "bpb":
            plan.bpb = True
        elif kind in ("", "core") and bare in core_labels:
            plan.core += [bare] if bare not in plan.core else []
        elif kind in ("", "chat") and bare in CHAT_TASKS:
            plan.chat += [bare] if bare not in plan.chat else []
        else:
            raise UserError(f"unknown task {name!r}; groups: {', '.join(GROUPS)}; CORE tasks: "
                            f"{', '.join(core_labels)}; chat tasks: {', '.join(CHAT_TASKS)} "
                            "(chat:NAME for the chat form of a name both have)")
    return plan


def evaluate(model: torch.nn.Module, tok, plan: Plan, *, data_dir: str | Path | None = None,
             bpb_data: str | Path | None = None, limit: int | None = None, shots: int | None = None,
             examples: bool = False, out_dir: str | Path | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run ``plan`` on ``model`` (eval mode) with its tokenizer ``tok``.

    data_dir: the evaluation data (the evals folder; None: `gptforge.eval.files.default_data_dir`).
    bpb_data: a shard directory or a UTF-8 text file (needed when ``plan.bpb``).
    limit: items per task (None: all). shots: few-shot count for every CORE task (None: each
        task's own). examples: keep per-example records. out_dir: where chat tasks write files
        (MT-bench answers). progress: ``progress(task, done, total)``.

    Returns {"tasks": {name: {...}}, "core", "core_tasks", "missing", "chatcore", "chatcore_tasks",
    "bpb", "seconds"}: the two means are None when no task of their kind ran.

    Raises:
        UserError: missing data, a tokenizer without chat tokens for chat tasks, bad settings.
    """
    t0 = time.perf_counter()
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    result: dict = {"tasks": {}, "core": None, "core_tasks": [], "missing": [], "chatcore": None,
                    "chatcore_tasks": [], "bpb": None}
    if plan.bpb:
        if bpb_data is None:
            raise UserError("task bpb needs data: a shard directory or a text file")
        p = Path(bpb_data)  # a shard directory's val split, or a text file
        res = bpb.bpb_shards(model, p, "val", tok) if p.is_dir() else bpb.bpb_text(model, tok, p)
        result["bpb"] = {**res, "data": str(p)}
    if plan.core:
        res = core.evaluate_core(model, tok, root, None if plan.core_all else plan.core, limit=limit,
                                 shots=shots, records=examples, progress=progress)
        result["tasks"].update({f"core:{k}": v for k, v in res["tasks"].items()})
        result.update(core=res["core"], core_tasks=list(res["tasks"]), missing=res["missing"])
    if plan.chat:
        res = chat.evaluate_chat(model, tok, plan.chat, root, limit, progress=progress, out_dir=out_dir,
                                 examples=examples)
        result["tasks"].update({f"chat:{k}": v for k, v in res["tasks"].items()})
        result["chatcore"], result["chatcore_tasks"] = res["chatcore"], res["chatcore_tasks"]
    for r in result["tasks"].values():
        add_interval(r)
        for group in r.get("by_phrasing", {}).values():
            add_interval(group)
    result["seconds"] = time.perf_counter() - t0
    return result


def format_table(result: dict) -> str:
    """The result as an aligned text table: one line per task, then the means."""
    lines = [f"{'task':40s} {'n':>6s} {'accuracy':>9s} {'95% interval':>14s} {'centred':>8s} "
             f"{'baseline':>9s} {'seconds':>8s}"]
    for name, r in result["tasks"].items():
        if r.get("accuracy") is None:  # answered, not scored (MT-bench)
            lines.append(f"{name:40s} {r['n']:>6d} {'-':>9s} {'-':>14s} {'-':>8s} {'-':>9s} "
                         f"{r['seconds']:>8.1f}")
            continue
        ci = format_interval(*r["ci95"]) if r.get("ci95") else "-"
        lines.append(f"{name:40s} {r['n']:>6d} {r['accuracy']:>9.1%} {ci:>14s} {r['centered']:>8.3f} "
                     f"{r['baseline']:>9.1%} {r['seconds']:>8.1f}")
        for group, g in r.get("by_phrasing", {}).items():  # template-seen / -unseen phrasings
            ci = format_interval(*g["ci95"]) if g.get("ci95") else "-"
            lines.append(f"{'  ' + group + ' phrasings':40s} {g['n']:>6d} {g['accuracy']:>9.1%} {ci:>14s}")
    if result["bpb"] is not None:
        b = result["bpb"]
        lines.append(f"bits per byte on {b['data']}: {b['bpb']:.4f} "
                     f"({b['tokens']:,} tokens, {b['bytes']:,} bytes)")
    if result["core"] is not None:
        n = len(result["core_tasks"])
        lines.append(f"CORE (mean centred accuracy over {n} tasks): {result['core']:.4f}")
    for m in result["missing"]:
        lines.append(f"CORE task {m['task']} not run: {m['path']} is missing")
    if result["chatcore"] is not None:
        lines.append(f"ChatCORE (mean centred accuracy over {', '.join(result['chatcore_tasks'])}): "
                     f"{result['chatcore']:.4f}")
    return "\n".join(lines)
