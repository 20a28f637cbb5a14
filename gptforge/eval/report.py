"""Report cards: runs side by side (training figures, bits per byte, CORE and chat-task accuracies).

    >>> cards = [run_card(d) for d in ["runs/x/pretrain", "runs/x/sft"]]
    >>> print(compare_markdown(cards))
    >>> compare_png(cards, "compare.png")

A run card reads what a run directory already holds: ``config.json`` (task, model), ``metrics.jsonl``
(steps, tokens, training seconds, the last validation loss and bits per byte) and, when
``gptforge eval`` has written one, ``eval.json`` (task accuracies, CORE, ChatCORE). Nothing is
recomputed, so a report takes well under a second. Every accuracy comes with its 95% Wilson
interval, and neighbouring runs evaluated on the same items are compared with an exact McNemar
test, stated in words ("sft vs pretrain on chat:arithmetic: +90 points, p < 0.001").
"""

from __future__ import annotations

import os
from pathlib import Path

from gptforge.errors import UserError
from gptforge.eval.stats import compare_sentence, format_interval, wilson_interval
from gptforge.io import read_json
from gptforge.train.plot import read_metrics, save_png


def run_card(run_dir: str | os.PathLike, eval_file: str | os.PathLike | None = None) -> dict:
    """The figures of one run directory as a dict (module docstring). ``eval_file``: an evaluation
    JSON other than ``RUN/eval.json``.

    Raises:
        UserError: not a run directory (no metrics.jsonl), or an unreadable eval JSON.
    """
    d = Path(run_dir)
    recs = read_metrics(d)
    cfg = read_json(d / "config.json", what="run config") if (d / "config.json").is_file() else {}
    train = [r for r in recs if "train_loss" in r]
    val = [r for r in recs if r.get("val_loss") is not None]
    card = {"run": str(d), "name": d.name if d.name not in ("", ".") else str(d),
            "task": cfg.get("task", "pretrain"),
            "model": f"{cfg.get('arch', '?')} {cfg.get('preset', '')} depth {cfg.get('depth', '?')}".strip(),
            "steps": train[-1]["step"] if train else 0, "tokens": train[-1]["tokens"] if train else 0,
            "train_s": train[-1].get("train_time_s") if train else None,
            "val_loss": val[-1]["val_loss"] if val else None,
            "val_bpb": val[-1].get("val_bpb") if val else None,
            "curve": [(r["tokens"], r["val_loss"]) for r in val], "eval": None, "pass": None}
    if card["task"] == "rl":  # its val_loss is 1 - pass@1, not nats: show the sampled pass@1 and pass@k
        k = cfg.get("rl_samples", 8)
        card["pass"] = (val[-1].get("val_pass1"), val[-1].get(f"val_pass{k}"), k) if val else None
        card["val_loss"], card["curve"] = None, []
    f = Path(eval_file) if eval_file else d / "eval.json"
    if f.is_file() or eval_file:
        card["eval"] = read_json(f, what="evaluation file (gptforge eval)")
    return card


def _num(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def compare_markdown(cards: list[dict]) -> str:
    """A markdown report: one table of training figures (a column per run), one of task accuracies
    (a row per task that any run was evaluated on; "-" where a run was not)."""
    head = "| | " + " | ".join(c["name"] for c in cards) + " |\n|---|" + "---:|" * len(cards) + "\n"

    def row(label, cells):
        return f"| {label} | " + " | ".join(cells) + " |\n"

    out = "## Runs\n\n" + head
    out += row("run", [f"`{c['run']}`" for c in cards])
    out += row("task", [c["task"] for c in cards])
    out += row("model", [c["model"] for c in cards])
    out += row("steps", [f"{c['steps']:,}" for c in cards])
    out += row("tokens", [f"{c['tokens']:,}" for c in cards])
    out += row("training seconds", [_num(c["train_s"], ".1f") for c in cards])
    out += row("val loss (nats/token)", [_num(c["val_loss"]) for c in cards])
    out += row("val bits per byte", [_num(c["val_bpb"]) for c in cards])
    if any(c["pass"] for c in cards):
        out += row("RL held-out pass@1 / pass@k (sampled)",
                   [f"{_num(c['pass'][0], '.1%')} / {_num(c['pass'][1], '.1%')} (k={c['pass'][2]})"
                    if c["pass"] else "-" for c in cards])
    evals = [c["eval"] or {} for c in cards]
    if any(e.get("bpb") for e in evals):
        out += row("bits per byte (eval)", [_num((e.get("bpb") or {}).get("bpb")) for e in evals])
    tasks = list(dict.fromkeys(t for e in evals for t in e.get("tasks", {})))  # in first-seen order
    if tasks:
        out += ("\n## Evaluation (accuracy; centred accuracy in brackets; 95% Wilson intervals in %)\n\n"
                + head)
        for t in tasks:
            results = [e.get("tasks", {}).get(t) for e in evals]
            out += row(t, [_accuracy_cell(r) for r in results])
            out += row(f"{t}, 95% interval", [_interval_cell(r) for r in results])
            # template-seen and -unseen phrasings of the synthetic tasks
            for g in dict.fromkeys(g for r in results for g in (r or {}).get("by_phrasing", {})):
                sub = [(r or {}).get("by_phrasing", {}).get(g) for r in results]
                out += row(f"{t}, {g} phrasings", [_accuracy_cell(x) for x in sub])
                out += row(f"{t}, {g} phrasings, 95% interval", [_interval_cell(x) for x in sub])
        out += row("**CORE**", [_num(e.get("core")) for e in evals])
        out += row("**ChatCORE**", [_num(e.get("chatcore")) for e in evals])
        sentences = _comparisons(cards, tasks)
        if sentences:
            out += ("\n## Differences (exact McNemar test on the same items; each run against the one "
                    "before it)\n\n" + "".join(f"- {s}\n" for s in sentences))
    missing = sorted({m["task"] for e in evals for m in e.get("missing", [])})
    if missing:
        out += f"\nCORE tasks without a local file (not run): {', '.join(missing)}.\n"
    return out


def _accuracy_cell(r: dict | None) -> str:
    """``"78.0% (+0.560), n=200"``; "-" for no result or no accuracy."""
    if r is None or r.get("accuracy") is None:
        return "-"
    centred = f" ({r['centered']:+.3f})" if r.get("centered") is not None else ""
    return f"{r['accuracy']:.1%}{centred}, n={r['n']}"


def _interval_cell(r: dict | None) -> str:
    """``"[71.7, 83.2]"``: the 95% Wilson interval of an accuracy, in percent; "-" without one."""
    if r is None or r.get("accuracy") is None or not r.get("n"):
        return "-"
    ci = r.get("ci95") or wilson_interval(round(r["accuracy"] * r["n"]), r["n"])  # older eval.json
    return format_interval(*ci)


def _comparisons(cards: list[dict], tasks: list[str]) -> list[str]:
    """One sentence per task and pair of neighbouring runs evaluated on the same items, e.g.
    "sft vs pretrain on chat:arithmetic: +90 points, p < 0.001 (significant at 5%; ...)"."""
    out = []
    for prev, cur in zip(cards, cards[1:], strict=False):
        ea, eb = (prev["eval"] or {}).get("tasks", {}), (cur["eval"] or {}).get("tasks", {})
        out += filter(None, (compare_sentence(prev["name"], cur["name"], t, ea[t], eb[t])
                             for t in tasks if t in ea and t in eb))  # None: not on the same items
    return out


def compare_png(cards: list[dict], out: str | os.PathLike) -> Path:
    """A PNG: validation loss against tokens per run (left), task accuracies per run (right).

    Raises:
        UserError: ``out`` does not end in .png.
    """
    import matplotlib

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"{out}: the plot is a PNG; give a file name ending in .png")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, c in enumerate(cards):
        if c["curve"]:
            ax_loss.plot(*zip(*c["curve"], strict=True), "o-", ms=3, color=f"C{i % 10}", label=c["name"])
    ax_loss.set(xlabel="tokens", ylabel="val loss (nats/token)", title="validation loss")
    tasks = list(dict.fromkeys(t for c in cards for t, r in ((c["eval"] or {}).get("tasks", {})).items()
                               if r.get("accuracy") is not None))
    width = 0.8 / max(len(cards), 1)
    for i, c in enumerate(cards):
        res = (c["eval"] or {}).get("tasks", {})
        ys = [(res.get(t) or {}).get("accuracy") or 0.0 for t in tasks]
        ax_acc.bar([j + i * width for j in range(len(tasks))], ys, width, color=f"C{i % 10}", label=c["name"])
    ax_acc.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=60, ha="right",
                      fontsize=7)
    ax_acc.set(ylabel="accuracy", ylim=(0, 1), title="task accuracy" if tasks else "no evaluation yet")
    return save_png(fig, (ax_loss, ax_acc), out)
