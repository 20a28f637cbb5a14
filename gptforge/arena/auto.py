"""An offline arena: chat models answer held-out questions with known answers, and an oracle judge
votes by correctness, so ratings (and preference pairs) come without people.

    >>> res = run_auto({"sft": (m1, tok1), "dpo": (m2, tok2)}, ["arithmetic"], n=100, store=store)

For each task, every model answers the first ``n`` held-out items (``gptforge.eval.chat.task_items``:
arithmetic, letter_count, gsm8k) with the calculator tool, greedily or sampled with a seed; all of
a model's replies are generated in batches up front (a reply does not depend on the opponent, so
this equals generating per battle, only faster). Then per item two models are drawn at random,
sides in random order (or, with ``all_pairs``, every pair of models fights on every item, sides
random), and the oracle votes: only A right -> ``a``; only B right -> ``b``; both right -> ``tie``;
both wrong -> ``bothbad``. Battles go to the vote store like human ones, session id ``"oracle"``,
with the task, reference and correctness in ``meta``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from gptforge.arena.store import WINNER, VoteStore
from gptforge.chat.render import render_for_completion
from gptforge.errors import UserError
from gptforge.eval.chat import MAX_NEW, generate_replies, reply_correct, task_items, text_of
from gptforge.eval.stats import format_interval, format_p, paired_test, wilson_interval

ORACLE = "oracle"
AUTO_TASKS = ("arithmetic", "letter_count", "gsm8k")


def oracle_vote(correct_a: bool, correct_b: bool) -> str:
    """The oracle's vote: a | b | tie (both right) | bothbad (both wrong)."""
    return ("tie" if correct_b else "a") if correct_a else ("b" if correct_b else "bothbad")


def run_auto(models: dict[str, tuple[torch.nn.Module, object]], tasks: Sequence[str], n: int,
             store: VoteStore | None = None, seed: int = 0, temperature: float = 0.0, all_pairs: bool = False,
             batch_size: int = 16, data_dir=None, log: Callable[[str], None] | None = None) -> dict:
    """Run the tournament. models: name -> (model in eval mode, tokenizer with chat tokens); at
    least two.

    Returns ``{"battles": [FastChat battle dicts], "accuracy": {model: {task: fraction right}},
    "ci95": {model: {task: [low, high]}} (Wilson), "paired": [{"task", "model_a", "model_b", and
    `gptforge.eval.stats.paired_test`'s figures: points (B minus A), only_a, only_b, p (exact
    McNemar)}] for every pair of models on every task, "n": items per task}``; battles are also
    stored in ``store`` when given.

    Raises:
        UserError: fewer than two models, an unknown task, or a missing data file.
        ValueError: n < 1.
    """
    if len(models) < 2:
        raise UserError("an arena needs at least two models (--ckpt A --ckpt B)")
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    names = list(models)
    rng = np.random.default_rng(seed)
    battles, accuracy, intervals, paired = [], {m: {} for m in names}, {m: {} for m in names}, []
    sampling = {"temperature": temperature, "seed": seed if temperature > 0 else None}
    for task in tasks:
        if task not in AUTO_TASKS:
            raise UserError(f"--tasks: {task!r} has no known answers to judge (choose from "
                            f"{', '.join(AUTO_TASKS)})")
        items = task_items(task, n, data_dir)
        max_new = MAX_NEW[task]
        replies, right = {}, {}
        for m in names:
            model, tok = models[m]
            prompts = [render_for_completion([{"role": "user", "content": q}], tok) for q, _ in items]
            out = generate_replies(model, tok, prompts, max_new, batch_size=batch_size,
                                   temperature=temperature, seed=seed)
            replies[m] = [parts or [{"type": "text", "text": ""}] for parts, _ in out]
            right[m] = [reply_correct(task, parts, ref)
                        for (parts, _), (_, ref) in zip(out, items, strict=True)]
            accuracy[m][task] = float(np.mean(right[m]))
            lo, hi = wilson_interval(sum(right[m]), len(right[m]))
            intervals[m][task] = [lo, hi]
            if log:
                log(f"{task}: {m} answered {len(items)} items, {accuracy[m][task]:.1%} right "
                    f"(95% interval {format_interval(lo, hi)})")
        for ma, mb in itertools.combinations(names, 2):  # same items for every model: a paired test
            t = paired_test(right[ma], right[mb])
            paired.append({"task": task, "model_a": ma, "model_b": mb, **t})
            if log:
                log(f"{task}: {mb} vs {ma}: {t['points']:+.0f} points, {format_p(t['p'])} (exact McNemar; "
                    f"right only for {mb}: {t['only_b']}, only for {ma}: {t['only_a']})")
        for i, (q, ref) in enumerate(items):
            pairs = (list(itertools.combinations(names, 2)) if all_pairs
                     else [tuple(rng.choice(names, size=2, replace=False))])
            for pa, pb in pairs:
                a, b = (pa, pb) if rng.random() < 0.5 else (pb, pa)
                vote = oracle_vote(right[a][i], right[b][i])
                meta = {"task": task, "reference": ref, "correct_a": right[a][i], "correct_b": right[b][i]}
                if store is not None:
                    bid = store.create_battle(ORACLE, q, a, b, replies[a][i], replies[b][i],
                                              {**sampling, "max_new_tokens": max_new}, meta)
                    store.record_vote(bid, ORACLE, vote)
                battles.append({"model_a": a, "model_b": b, "task": task, "winner": WINNER[vote],
                                "reply_a": text_of(replies[a][i]), "reply_b": text_of(replies[b][i])})
    return {"battles": battles, "accuracy": accuracy, "ci95": intervals, "paired": paired, "n": n}
