"""Chat-model tasks: how well a chat (SFT) model answers, in the ChatCORE style of nanochat.

    >>> res = evaluate_chat(model, tok, ["arc_easy", "gsm8k"], limit=100)
    >>> res["tasks"]["arc_easy"]["accuracy"], res["chatcore"]

Every task talks to the model the way a user would: the question is a user turn, rendered with
``render_for_completion`` (the chat special tokens; a tokenizer without them is a UserError), and
the model answers greedily. Tasks (data under ``data_dir``, default `gptforge.eval.files.default_data_dir`):

- ``arc_easy``, ``arc_challenge`` (``icl/world_knowledge/arc_*.jsonl``: ``query``, ``choices``,
  ``gold``): lettered multiple choice. The user turn lists the question and the options "A. ...",
  "B. ..."; the answer is the letter whose token has the highest logit at the reply's first position,
  among the letter tokens only (so a model that would rather say something else still picks a
  letter). Baseline 1 / (number of options): 25% for ARC's four.
- ``gsm8k`` (``gsm8k/test.jsonl``, the 1,319 test problems): the question alone as the user turn
  (as the gsm8k SFT mixture renders it), a reply of up to 256 tokens with the calculator tool (the
  engine runs each call and forces its output in). The answer is the number after the last ``####``
  in the reply's text (tool calls and outputs excluded), or the last number in it when there is no
  ``####`` (a model that does not use the GSM8K format still gets credit for a final number);
  compared as numbers with the one after ``#### `` in the reference (commas removed). Baseline 0.
- ``humaneval`` (``humaneval/HumanEval.jsonl.gz``, 164 problems, OpenAI): the user turn asks to
  complete the function whose signature and docstring it shows; the code is the reply's first
  fenced block (or the whole reply). A reply that defines the entry point is appended to the
  prompt (the prompt's imports and helpers stay), otherwise it is taken as the body following the
  prompt. ``prompt + code + test + check(entry_point)`` then runs in ``gptforge.eval.sandbox``
  (never in this process); pass@1 of the greedy reply. Baseline 0.
- ``arithmetic`` and ``letter_count``: the synthetic tool tasks of ``gptforge.chat.tasks``
  (test split, seed 1, never trained on): arithmetic with operands of up to 3 digits, and the
  letter-count questions of the spelling mixture; 200 items each unless ``limit`` says otherwise,
  half in phrasing families SFT trains on and half in held-out ones (``by_phrasing``: template-seen
  and template-unseen accuracy apart). The answer is the last number of the reply's text, right
  when it equals the reference's tool output. Baseline: the share of the commonest answer among
  the items (always answering "1" gets about 40% of letter counts).
- ``social``: the held-out greetings, thanks, questions about the assistant and requests it cannot
  serve (a poem, facts) of the identity mixture; right when the reply calls no tool and answers in
  kind (``gptforge.chat.tasks.reply_correct``). Baseline 0.
- ``mt_bench`` (``mt_bench/question.jsonl``, 80 two-turn questions, LMSYS): both turns answered and
  saved to ``out_dir/mt_bench_answers.jsonl`` for reading; no score (there is no judge model
  offline), so it has no accuracy and is left out of the mean.

ChatCORE: the mean of the centred accuracies ((accuracy - baseline) / (1 - baseline)) of the scored
tasks that were run. nanochat's ChatCORE averages ARC-E, ARC-C, MMLU, GSM8K, HumanEval and its
SpellingBee; MMLU has no local copy here and the letter-count task stands in for SpellingBee, so
the result lists the tasks it averaged (``chatcore_tasks``) and compare it only with itself.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import textwrap
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from gptforge.chat import tasks as chat_tasks
from gptforge.chat.render import ChatTokens, render_for_completion
from gptforge.chat.tasks import (  # noqa: F401
    gsm8k_answer,
    held_out,
    last_count,
    last_number,
    reply_correct,
    text_of,
)
from gptforge.engine import ToolUse, generate
from gptforge.errors import UserError
from gptforge.eval.core import centered
from gptforge.eval.files import default_data_dir, missing_hint
from gptforge.eval.sandbox import protections, run_python
from gptforge.eval.stats import items_fingerprint
from gptforge.models import eval_mode
from gptforge.tokenizer import Tokenizer

TASKS = ("arc_easy", "arc_challenge", "gsm8k", "humaneval", "arithmetic", "letter_count", "social",
         "mt_bench")
SCORED = TASKS[:-1]  # mt_bench is answered, not scored
FILES = {"arc_easy": "icl/world_knowledge/arc_easy.jsonl",
         "arc_challenge": "icl/world_knowledge/arc_challenge.jsonl",
         "gsm8k": "gsm8k/test.jsonl", "humaneval": "humaneval/HumanEval.jsonl.gz",
         "mt_bench": "mt_bench/question.jsonl"}
MAX_NEW = {"gsm8k": 256, "humaneval": 256, "arithmetic": 48, "letter_count": 48, "social": 64,
           "mt_bench": 256}
SYNTHETIC = ("arithmetic", "letter_count", "social")  # items from gptforge.chat.tasks
SYNTHETIC_N = 200  # items of the generated tool tasks when no limit is given (bench/chat_cpu.py's default)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

Progress = Callable[[str, int, int], None]  # (task, items done, items in the task)


# ---------------------------------------------------------------------------------------------
# answers: extraction and comparison

def extract_code(reply: str) -> str:
    """The first fenced code block of ``reply`` (```python or bare ```; an unclosed fence runs to the
    end), or the whole reply when it has none."""
    m = re.search(r"```[a-zA-Z0-9_+-]*[ \t]*\n(.*?)(?:```|\Z)", reply, re.DOTALL)
    return m.group(1) if m else reply


def humaneval_program(problem: dict, reply: str) -> str:
    """The program that tests ``reply`` on a HumanEval ``problem`` (``prompt``, ``test``,
    ``entry_point``): prompt + code (see the module docstring) + test + ``check(entry_point)``."""
    code = extract_code(reply)
    entry = problem["entry_point"]
    if not re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        # a bare body continues the prompt's def: indent it if the model wrote it flush left
        code = code if code.lstrip("\n").startswith((" ", "\t")) else textwrap.indent(code, "    ")
    return f"{problem['prompt']}{code}\n\n{problem['test']}\n\ncheck({entry})\n"


def reply_parts(ids: Sequence[int], tok: Tokenizer) -> list[dict]:
    """An assistant reply's token ids (``<|assistant_start|>`` excluded) as message parts
    ``{"type": "text" | "tool_call" | "tool_output", "text": str}``, up to ``<|assistant_end|>``
    or ``<|endoftext|>``; a call or output cut off by the token limit keeps its type."""
    t = ChatTokens(tok)
    switch = {t.tool_call_start: "tool_call", t.tool_output_start: "tool_output", t.tool_call_end: "text",
              t.tool_output_end: "text"}  # the token that opens or closes a part: the kind that follows
    parts: list[dict] = []
    kind, buf = "text", []

    def flush():
        if buf or kind != "text":
            parts.append({"type": kind, "text": tok.decode(buf)})

    for i in ids:
        if i in (t.assistant_end, t.eot):
            break
        if i in switch:
            flush()
            kind, buf = switch[i], []
        else:
            buf.append(i)
    if buf:
        flush()
    return parts


# ---------------------------------------------------------------------------------------------
# model calls

@torch.inference_mode()
def choose_letters(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                   letter_ids: Sequence[Sequence[int]]) -> list[int]:
    """For each prompt, the index of the option whose letter token has the highest next-token logit,
    among that prompt's ``letter_ids`` only.

    Args:
        prompts: B token-id lists; each is cropped to its last ``block_size`` tokens.
        letter_ids: B lists of token ids, one per option ("A", "B", ...).
    Returns:
        B indices into the rows of ``letter_ids``.
    """
    rows = [torch.tensor(list(p)[-model.config.block_size:], dtype=torch.long) for p in prompts]
    # right padding with 0: a causal model's earlier positions never see it
    idx = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(next(model.parameters()).device)
    logits, _ = model(idx)  # (B, T, V)
    return [int(logits[i, len(rows[i]) - 1, list(ids)].argmax()) for i, ids in enumerate(letter_ids)]


def generate_replies(model: torch.nn.Module, tok: Tokenizer, prompts: Sequence[Sequence[int]],
                     max_new_tokens: int, *, tools: bool = True, batch_size: int = 8,
                     on_batch: Callable[[int], None] | None = None, temperature: float = 0.0,
                     seed: int | None = None) -> list[tuple[list[dict], bool]]:
    """Greedy replies to completion prompts (``render_for_completion``), ``batch_size`` rows at a
    time (prompts of similar length together), with the calculator tool when ``tools``.
    ``temperature`` > 0 samples instead (the reply to the i-th prompt in length order seeded with
    ``seed + i`` when ``seed`` is given).

    A prompt longer than ``block_size - max_new_tokens`` (but at least half the block) keeps its
    last tokens, so the reply fits the context. Returns, in the order of ``prompts``,
    ``(reply_parts, stopped)``: stopped is True when the reply ended before ``max_new_tokens``.
    ``on_batch(k)`` is called after each batch with the number of replies in it.
    """
    t = ChatTokens(tok)
    tool = ToolUse.from_tokenizer(tok) if tools else None
    block = model.config.block_size
    keep = max(block - max_new_tokens, block // 2)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[tuple[list[dict], bool]] = [([], False)] * len(prompts)
    for s in range(0, len(order), batch_size):
        rows = order[s: s + batch_size]
        replies = generate(model, [list(prompts[i])[-keep:] for i in rows], max_new_tokens,
                           temperature=temperature, seed=None if seed is None else seed + s,
                           stop_tokens=[t.assistant_end, t.eot], tool=tool)
        for i, ids in zip(rows, replies, strict=True):
            out[i] = (reply_parts(ids, tok), len(ids) < max_new_tokens)
        if on_batch:
            on_batch(len(rows))
    return out


# ---------------------------------------------------------------------------------------------
# data

def _read_jsonl(path: Path, task: str) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path}: {task} data not found; {missing_hint()}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not readable as JSON lines ({e})") from None


def _gsm8k_items(rows: list[dict]) -> list[tuple[str, str]]:
    """(question, reference number) of GSM8K rows: the number after the answer's last ``#### ``."""
    return [(r["question"].strip(), r["answer"].rpartition("#### ")[2].strip().replace(",", ""))
            for r in rows]


def mc_question(query: str, choices: Sequence[str]) -> str:
    """The user turn of a lettered multiple-choice item."""
    question = query.removeprefix("Question:").strip()
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{question}\n\n{options}\n\nAnswer with the letter of the correct option."


def humaneval_question(prompt: str) -> str:
    """The user turn of a HumanEval problem."""
    return ("Complete this Python function. Reply with the whole function in a ```python code block.\n\n"
            f"```python\n{prompt.strip()}\n```")


def _tool_items(task: str, n: int) -> list[tuple[str, str, str]]:
    """(question, answer, phrasing family) of the synthetic tasks (`gptforge.chat.tasks`, test
    split, seed 1): for arithmetic and letter_count the first n - n // 2 in template-seen phrasings,
    then n // 2 in template-unseen ones; for social up to n of its held-out questions."""
    if task == "social":
        drawn = chat_tasks.items(task, "test", n)
    else:
        drawn = chat_tasks.items(task, "test", n - n // 2, phrasings="train") + \
            chat_tasks.items(task, "test", n // 2, phrasings="test")
    return [(prompt[0]["content"], ref, family) for prompt, ref, family in drawn]


def task_items(task: str, n: int, data_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """(question, reference answer) of the held-out items of a task with a numeric answer
    (``arithmetic``, ``letter_count``, ``gsm8k``): the first ``n``, as ``evaluate_chat`` draws them.

    Raises:
        UserError: another task, or gsm8k's file missing.
    """
    if task in ("arithmetic", "letter_count"):
        return [(q, a) for q, a, _ in _tool_items(task, n)]
    if task == "gsm8k":
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        return _gsm8k_items(_read_jsonl(root / FILES[task], task)[:n])
    raise UserError(f"task {task!r} has no numeric answers (choose from arithmetic, letter_count, gsm8k)")


# ---------------------------------------------------------------------------------------------
# tasks

def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _run_mc(model, tok, rows, batch_size, tick) -> list[dict]:
    letter_ids = {}
    for L in LETTERS[: max(len(r["choices"]) for r in rows)]:
        ids = tok.encode_ordinary(L)
        if len(ids) != 1:
            raise UserError(f"the tokenizer writes the letter {L} as {len(ids)} tokens; lettered multiple "
                            "choice needs one token per letter")
        letter_ids[L] = ids[0]
    records = []
    for s in range(0, len(rows), batch_size):
        batch = rows[s: s + batch_size]
        prompts = [render_for_completion(_user(mc_question(r["query"], r["choices"])), tok) for r in batch]
        options = [[letter_ids[L] for L in LETTERS[: len(r["choices"])]] for r in batch]
        for r, pick in zip(batch, choose_letters(model, prompts, options), strict=True):
            records.append({"query": r["query"], "gold": LETTERS[r["gold"]], "pred": LETTERS[pick],
                            "correct": pick == r["gold"], "options": len(r["choices"])})
        tick(len(batch))
    return records


def _run_generation(model, tok, task, items, max_new, batch_size, tick) -> list[dict]:
    """items: (question, reference) pairs; score by the task's extraction rule."""
    prompts = [render_for_completion(_user(q), tok) for q, _ in items]
    replies = generate_replies(model, tok, prompts, max_new, tools=True, batch_size=batch_size, on_batch=tick)
    records = []
    for (q, ref), (parts, stopped) in zip(items, replies, strict=True):
        text = text_of(parts)
        pred = {"gsm8k": gsm8k_answer, "letter_count": last_count}.get(task, last_number)(text)
        records.append({"question": q, "reference": ref, "pred": pred,
                        "correct": reply_correct(task, parts, ref), "reply": parts, "stopped": stopped})
    return records


def _run_humaneval(model, tok, problems, max_new, batch_size, tick, timeout: float = 10.0) -> list[dict]:
    prompts = [render_for_completion(_user(humaneval_question(p["prompt"])), tok) for p in problems]
    replies = generate_replies(model, tok, prompts, max_new, tools=False, batch_size=batch_size,
                               on_batch=tick)
    programs = [humaneval_program(p, text_of(parts)) for p, (parts, _) in zip(problems, replies, strict=True)]
    with ThreadPoolExecutor(max_workers=4) as pool:  # each run is its own process; threads only wait
        results = list(pool.map(lambda prog: run_python(prog, timeout), programs))
    return [{"task_id": p["task_id"], "correct": r.passed, "status": r.status, "reply": text_of(parts),
             "stderr": r.stderr[-2000:]}
            for p, (parts, _), r in zip(problems, replies, results, strict=True)]


def _run_mt_bench(model, tok, questions, max_new, batch_size, tick) -> list[dict]:
    """Both turns of each question: every first turn (batched), then every second turn."""
    convs = [_user(q["turns"][0]) for q in questions]
    for turn in range(2):
        prompts = [render_for_completion(c, tok) for c in convs]
        replies = generate_replies(model, tok, prompts, max_new, tools=True, batch_size=batch_size,
                                   on_batch=lambda k: tick(k / 2))
        for q, c, (parts, _) in zip(questions, convs, replies, strict=True):
            c.append({"role": "assistant", "content": parts or [{"type": "text", "text": ""}]})
            if turn == 0:
                c.append({"role": "user", "content": q["turns"][1]})
    return [{"question_id": q["question_id"], "category": q["category"], "turns": q["turns"],
             "answers": [text_of(c[1]["content"]), text_of(c[3]["content"])],
             "messages": c} for q, c in zip(questions, convs, strict=True)]


def evaluate_chat(model: torch.nn.Module, tok: Tokenizer, tasks: Sequence[str] | None = None,
                  data_dir: str | Path | None = None, limit: int | None = None, *,
                  progress: Progress | None = None, out_dir: str | Path | None = None, batch_size: int = 8,
                  max_new_tokens: int | None = None, examples: bool = False) -> dict:
    """Evaluate a chat model on ``tasks`` (names from ``TASKS``; None: all of them).

    Args:
        model: a gptforge model in eval mode; tok: its tokenizer, with the chat special tokens.
        data_dir: the evals folder (``default_data_dir()`` when None).
        limit: at most this many items per task (the first ones of each file, in file order;
            the synthetic tasks draw this many, default ``SYNTHETIC_N``).
        progress: called as ``progress(task, done, total)`` after each batch.
        out_dir: where ``mt_bench_answers.jsonl`` goes (mt_bench answers are also in the result
            when ``examples``); created if missing.
        batch_size: prompts per forward pass / generation batch.
        max_new_tokens: reply length for the generation tasks (default: ``MAX_NEW`` per task).
        examples: add each task's per-item records under ``"examples"``.
    Returns:
        ``{"tasks": {name: {"n", "accuracy", "centered", "baseline", "seconds"[, "examples"]}},
        "chatcore": mean centred accuracy of the scored tasks run (None if none),
        "chatcore_tasks": their names}``; mt_bench has accuracy, centred and baseline None and
        ``"answers_file"``; humaneval also ``"sandbox"`` (the fences that held, see
        ``gptforge.eval.sandbox``).
    Raises:
        UserError: an unknown task name, a missing or unreadable data file (naming its path), a
            tokenizer without chat tokens, or ``limit`` < 1.
    """
    ChatTokens(tok)  # a UserError, naming the missing tokens, before any work
    tasks = list(TASKS if tasks is None else tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown chat task(s) {', '.join(unknown)} (choose from {', '.join(TASKS)})")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1, not {limit}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    data = {t: _read_jsonl(root / FILES[t], t) for t in tasks if t in FILES}  # every missing file, up front
    results: dict[str, dict] = {}
    with eval_mode(model):
        for task in tasks:
            results[task] = _evaluate_task(model, tok, task, data.get(task), limit, progress, out_dir,
                                           batch_size, max_new_tokens or MAX_NEW.get(task, 256), examples)
    scored = [t for t in tasks if t in SCORED and results[t]["n"]]
    mean = sum(results[t]["centered"] for t in scored) / len(scored) if scored else None
    return {"tasks": results, "chatcore": mean, "chatcore_tasks": scored}


def _by_phrasing(records: list[dict]) -> dict:
    """``{"seen": {"n", "accuracy"}, "unseen": {...}}``: accuracy on template-seen phrasing families
    (trained on) and on held-out ones (`gptforge.chat.mixtures.HELD_OUT`), when there are any."""
    out = {}
    for group, want in (("seen", False), ("unseen", True)):
        rs = [r for r in records if held_out(r["family"]) == want]
        if rs:
            out[group] = {"n": len(rs), "accuracy": sum(r["correct"] for r in rs) / len(rs),
                          "correct": [int(r["correct"]) for r in rs]}
    return out


def _evaluate_task(model, tok, task, rows, limit, progress, out_dir, batch_size, max_new, examples) -> dict:
    t0 = time.perf_counter()
    if task in SYNTHETIC:
        items = _tool_items(task, limit or SYNTHETIC_N)
    else:
        items = rows[:limit] if limit else rows
    total, done = len(items), 0

    def tick(k):
        nonlocal done
        done += k
        if progress:
            progress(task, min(round(done), total), total)

    res: dict = {}
    if task in ("arc_easy", "arc_challenge"):
        records = _run_mc(model, tok, items, batch_size, tick)
        baseline = sum(1 / r["options"] for r in records) / len(records) if records else 0.25
    elif task == "gsm8k":
        records = _run_generation(model, tok, task, _gsm8k_items(items), max_new, batch_size, tick)
        baseline = 0.0
    elif task in SYNTHETIC:
        records = _run_generation(model, tok, task, [(q, a) for q, a, _ in items], max_new, batch_size, tick)
        for r, (_, _, family) in zip(records, items, strict=True):
            r["family"] = family
        # a model that always writes the commonest answer scores this much (letter counts are
        # mostly 0, 1 or 2: "1" alone is right about 40% of the time); social: 0
        answers = [a for _, a, _ in items]
        baseline = (max(answers.count(a) for a in set(answers)) / len(answers)
                    if answers and task != "social" else 0.0)
        if task != "social":
            res["by_phrasing"] = _by_phrasing(records)
    elif task == "humaneval":
        records, baseline = _run_humaneval(model, tok, items, max_new, batch_size, tick), 0.0
        res["sandbox"] = list(protections())
    else:  # mt_bench: answered, not scored
        records = _run_mt_bench(model, tok, items, max_new, batch_size, tick)
        if out_dir is not None:
            path = Path(out_dir) / "mt_bench_answers.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            keep = ("question_id", "category", "turns", "answers")
            path.write_text("".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in records),
                            encoding="utf-8")
            res["answers_file"] = str(path)
        res.update(n=len(records), accuracy=None, centered=None, baseline=None)
    if task != "mt_bench":
        accuracy = sum(r["correct"] for r in records) / len(records) if records else math.nan
        res.update(n=len(records), accuracy=accuracy, centered=centered(accuracy, 100 * baseline),
                   baseline=baseline, correct=[int(r["correct"]) for r in records],  # per item: paired tests
                   items=items_fingerprint(json.dumps(item, sort_keys=True, default=str) for item in items))
    res["seconds"] = round(time.perf_counter() - t0, 3)
    if examples:
        res["examples"] = records
    return res
