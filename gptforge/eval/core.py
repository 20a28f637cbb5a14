"""The CORE benchmark of base models: 22 in-context-learning tasks scored by log-likelihood.

CORE (Li et al. 2024, "DataComp-LM", the DCLM paper, section 3 and appendix G) is the mean over 22
low-variance tasks of the *centred* accuracy

    centred = (accuracy - b) / (1 - b)        b: the task's random-guess accuracy (fraction)

so 0 is chance and 1 is perfect on every task. nanochat reports it for its base models
(``nanochat/core_eval.py``, ``scripts/base_eval.py``); this module follows nanochat's rules, so
the figures compare:

- Task files: the llm-foundry JSONL files (``query``/``choices``/``gold`` for multiple choice,
  ``context_options``/``continuation``/``gold`` for schema, ``context``/``continuation`` for
  language modelling), under one directory (``../shared/data/evals/icl``; nanochat's
  ``eval_bundle/eval_data`` has the same sub-paths). `CORE_TASKS` lists them with their few-shot
  counts, random baselines and delimiters (DCLM ``eval/mmlu_and_lowvar.yaml`` and
  ``eval_meta_data_v1.csv``).
- Few-shot examples for item ``idx``: ``random.Random(seed + idx).sample`` of ``k`` indices from all
  the other items of the file (seed 1234 as nanochat), written before the item, each followed by a
  blank line.
- Prompts (`render_options`): multiple choice = one shared context, one continuation per choice;
  schema = one context per option, one shared continuation; language modelling = one context and
  its continuation. The delimiter (a space, or ``"\\nAnswer: "``) sits between them.
- Tokens (`core_requests`): each full prompt is tokenized whole, after a BOS token (gptforge's
  ``<|endoftext|>``, the document separator the model saw in pretraining). The scored span is
  where the options differ: after their common token prefix (multiple choice), their common
  token suffix (schema), or after the prompt without its continuation (language modelling).
- Decision: multiple choice and schema pick the option with the **lowest mean loss per token**
  over the scored span (nanochat's rule; the mean keeps long answers from being penalised for
  their length). Language modelling is correct only if greedy decoding reproduces every
  continuation token.

lm-evaluation-harness scores multiple choice differently: its ``acc`` picks the highest *summed*
log-likelihood (``acc_norm`` divides by bytes), over a continuation it splits off at the context's
token length (`lmeval_requests`). Every example record keeps both the summed log-likelihoods and
the sum-rule prediction, which is how tests/test_eval_lmeval.py cross-checks this module against
lm-eval itself.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gptforge.errors import UserError
from gptforge.eval.files import missing_hint
from gptforge.eval.loglik import Request, Score, score_requests
from gptforge.eval.stats import items_fingerprint
from gptforge.io import read_text

KINDS = ("multiple_choice", "schema", "language_modeling")
ANSWER = "\nAnswer: "  # the delimiter of the question-answering tasks
DEFAULT_SEED = 1234  # nanochat's: item idx draws its few-shot examples with random.Random(1234 + idx)


@dataclass(frozen=True)
class TaskSpec:
    """One CORE task. label: its name; path: the JSONL file under the task directory; kind: one of
    `KINDS`; shots: few-shot examples per item; baseline: random-guess accuracy in percent;
    delimiter: text between context and continuation."""

    label: str
    path: str
    kind: str
    shots: int
    baseline: float
    delimiter: str = " "


MC, SCHEMA, LM = KINDS
#: the 22 CORE tasks in DCLM's order (dclm eval/mmlu_and_lowvar.yaml; baselines from eval_meta_data_v1.csv)
CORE_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("hellaswag_zeroshot", "language_understanding/hellaswag.jsonl", MC, 0, 25),
    TaskSpec("jeopardy", "world_knowledge/jeopardy_all.jsonl", LM, 10, 0, ANSWER),
    TaskSpec("bigbench_qa_wikidata", "world_knowledge/bigbench_qa_wikidata.jsonl", LM, 10, 0),
    TaskSpec("arc_easy", "world_knowledge/arc_easy.jsonl", MC, 10, 25, ANSWER),
    TaskSpec("arc_challenge", "world_knowledge/arc_challenge.jsonl", MC, 10, 25, ANSWER),
    TaskSpec("copa", "commonsense_reasoning/copa.jsonl", MC, 0, 50),
    TaskSpec("commonsense_qa", "commonsense_reasoning/commonsense_qa.jsonl", MC, 10, 20),
    TaskSpec("piqa", "commonsense_reasoning/piqa.jsonl", MC, 10, 50, ANSWER),
    TaskSpec("openbook_qa", "commonsense_reasoning/openbook_qa.jsonl", MC, 0, 25),
    TaskSpec("lambada_openai", "language_understanding/lambada_openai.jsonl", LM, 0, 0),
    TaskSpec("hellaswag", "language_understanding/hellaswag.jsonl", MC, 10, 25),
    TaskSpec("winograd", "language_understanding/winograd_wsc.jsonl", SCHEMA, 0, 50),
    TaskSpec("winogrande", "language_understanding/winogrande.jsonl", SCHEMA, 0, 50),
    TaskSpec("bigbench_dyck_languages", "symbolic_problem_solving/bigbench_dyck_languages.jsonl", LM, 10, 0),
    TaskSpec("agi_eval_lsat_ar", "symbolic_problem_solving/agi_eval_lsat_ar.jsonl", MC, 3, 20),
    TaskSpec("bigbench_cs_algorithms", "symbolic_problem_solving/bigbench_cs_algorithms.jsonl", LM, 10, 0),
    TaskSpec("bigbench_operators", "symbolic_problem_solving/bigbench_operators.jsonl", LM, 10, 0),
    TaskSpec("bigbench_repeat_copy_logic", "symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl", LM,
             10, 0),
    TaskSpec("squad", "reading_comprehension/squad.jsonl", LM, 10, 0),
    TaskSpec("coqa", "reading_comprehension/coqa.jsonl", LM, 0, 0),
    TaskSpec("boolq", "reading_comprehension/boolq.jsonl", MC, 10, 62, ANSWER),
    TaskSpec("bigbench_language_identification",
             "language_understanding/bigbench_language_identification.jsonl", MC, 10, 9.1),
)
TASKS: dict[str, TaskSpec] = {t.label: t for t in CORE_TASKS}


def get_task(name: str) -> TaskSpec:
    """The spec of CORE task ``name``. Raises UserError naming the known tasks."""
    if name not in TASKS:
        raise UserError(f"unknown CORE task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def task_dir(data_dir: str | Path) -> Path:
    """The directory that holds the task sub-folders (``world_knowledge/`` ...): ``data_dir`` itself,
    ``data_dir/icl`` when given the evals folder, or ``data_dir/evals/icl`` when given the shared
    data root. Raises UserError if none exists."""
    p = Path(data_dir)
    for sub in (p / "icl", p / "evals" / "icl"):
        if sub.is_dir():
            return sub
    if not p.is_dir():
        raise UserError(f"{p}: no such task directory (expected the CORE task files); {missing_hint()}")
    return p


# ----------------------------------------------------------------------------------------------
# data


_FIELDS = {MC: {"query": str, "choices": list, "gold": int},
           SCHEMA: {"context_options": list, "continuation": str, "gold": int},
           LM: {"context": str, "continuation": str}}


def load_rows(path: str | Path, kind: str) -> list[dict]:
    """The rows of a task's JSONL file, checked for ``kind``'s fields (see module docstring).

    Raises:
        UserError: missing or unreadable file, a line that is not JSON, a missing or mistyped field,
            fewer than two options, or ``gold`` out of range (message: file and line).
    """
    p = Path(path)
    rows = []
    for n, line in enumerate(read_text(p, "task file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise UserError(f"{p}:{n}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise UserError(f"{p}:{n}: expected a JSON object")
        for key, typ in _FIELDS[kind].items():
            if not isinstance(row.get(key), typ) or isinstance(row.get(key), bool):
                raise UserError(f"{p}:{n}: a {kind} row needs {key!r} ({typ.__name__})")
        options = row.get("choices", row.get("context_options"))
        if options is not None:
            if len(options) < 2 or not all(isinstance(o, str) for o in options):
                raise UserError(f"{p}:{n}: needs a list of at least two strings")
            if not 0 <= row["gold"] < len(options):
                raise UserError(f"{p}:{n}: gold {row['gold']} is not an index of its {len(options)} options")
        rows.append(row)
    if not rows:
        raise UserError(f"{p}: empty task file")
    return rows


def fewshot_indices(n_rows: int, idx: int, k: int, seed: int = DEFAULT_SEED) -> list[int]:
    """The rows that serve as few-shot examples for row ``idx`` of a task with ``n_rows`` rows:
    ``random.Random(seed + idx).sample`` of min(k, n_rows - 1) of the other rows (nanochat's rule;
    deterministic, never ``idx`` itself). ``sample`` picks positions from the population's length and
    the random stream alone, so sampling ``range(n_rows - 1)`` and shifting positions at or past
    ``idx`` up by one draws exactly what sampling nanochat's list ``[i for i in range(n_rows) if i !=
    idx]`` draws, without building that list per item."""
    k = min(k, n_rows - 1)
    if k <= 0:
        return []
    return [j + (j >= idx) for j in random.Random(seed + idx).sample(range(n_rows - 1), k)]


def render_options(spec: TaskSpec, item: dict, fewshot: Sequence[dict] = ()) -> list[tuple[str, str]]:
    """The prompt of each option of ``item`` as (context, continuation) strings; their concatenation is
    the full prompt nanochat renders (its Jinja templates in ``core_eval.py``).

    Few-shot examples come first, each as its context, the delimiter d and its gold continuation,
    followed by a blank line ("\\n\\n"). Then:
      multiple_choice: (shots + query + d, choice) for each choice;
      schema:          (shots + option + d, continuation) for each context option;
      language_modeling: one pair (shots + context.strip() + d, continuation). Contexts are stripped
        because some files end them in whitespace.
    """
    d = spec.delimiter
    if spec.kind == MC:
        shots = "".join(f"{ex['query']}{d}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
        return [(shots + item["query"] + d, choice) for choice in item["choices"]]
    if spec.kind == SCHEMA:
        shots = "".join(f"{ex['context_options'][ex['gold']]}{d}{ex['continuation']}\n\n" for ex in fewshot)
        return [(shots + option + d, item["continuation"]) for option in item["context_options"]]
    shots = "".join(f"{ex['context'].strip()}{d}{ex['continuation']}\n\n" for ex in fewshot)
    return [(shots + item["context"].strip() + d, item["continuation"])]


# ----------------------------------------------------------------------------------------------
# tokens


def core_requests(tok, options: Sequence[tuple[str, str]], kind: str, bos: int | None) -> list[Request]:
    """Scoring requests of one item, split the way nanochat's core_eval splits them.

    Each option's context + continuation is encoded whole (``tok.encode_ordinary``) after ``bos`` (None:
    nothing prepended). The scored span:
      multiple_choice: after the longest token prefix common to all options;
      schema: the longest token suffix common to all options;
      language_modeling: after the tokens of the prompt without its continuation (right-stripped, as
        nanochat does: a trailing space would merge into the continuation's first token).
    The span always keeps at least one token on each side (identical options, or a tokenizer that
    merges across the boundary, would otherwise leave nothing to score).
    """
    head = [] if bos is None else [bos]
    full = [head + tok.encode_ordinary(c + x) for c, x in options]
    if any(len(f) < 2 for f in full):
        raise UserError("a prompt encodes to fewer than two tokens; nothing to score")
    common = lambda seqs: len(os.path.commonprefix(seqs))  # of lists of ids too, not only of paths
    if kind == MC:
        starts = [common(full)] * len(full)
    elif kind == SCHEMA:
        suffix = common([s[::-1] for s in full])
        starts = [len(s) - suffix for s in full]
    else:
        starts = [common([head + tok.encode_ordinary(options[0][0].rstrip()), full[0]])]
    starts = [min(max(s, 1), len(f) - 1) for s, f in zip(starts, full, strict=True)]
    return [Request(f[:s], f[s:]) for f, s in zip(full, starts, strict=True)]


def lmeval_requests(tok, options: Sequence[tuple[str, str]], bos: int | None) -> list[Request]:
    """Scoring requests split as lm-evaluation-harness splits them (``TemplateLM._encode_pair``, v0.4):
    trailing whitespace of the context moves to the front of the continuation; context + continuation
    is encoded whole and the context alone; the continuation is the whole encoding after as many
    tokens as the context has. ``bos`` (None: nothing) is prepended to the context; an empty context
    with no ``bos`` gets ``<|endoftext|>``, as lm-eval's prefix token. Used to cross-check against lm-eval."""
    out = []
    for context, continuation in options:
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = tok.encode_ordinary(context + continuation)
        ctx = tok.encode_ordinary(context)
        head = [] if bos is None else [bos]
        if not head and not ctx:
            if tok.eot_id is None:
                raise UserError("an empty context needs a BOS or <|endoftext|> token to condition on")
            head = [tok.eot_id]
        out.append(Request(head + ctx, whole[len(ctx):]))
    return out


# ----------------------------------------------------------------------------------------------
# evaluation


def centered(accuracy: float, baseline: float) -> float:
    """(accuracy - b) / (1 - b) with b = baseline / 100: 0 at chance, 1 when perfect (accuracy a
    fraction, baseline in percent, a fraction out; a below-chance accuracy gives a negative value).
    A baseline of 100% (chance is always right) gives 0: accuracy then says nothing beyond chance."""
    b = baseline / 100
    return (accuracy - b) / (1 - b) if b < 1 else 0.0


def _judge(spec: TaskSpec, item: dict, scores: list[Score]) -> dict:
    """One example's record: correct plus what decided it."""
    if spec.kind == LM:
        s = scores[0]
        return {"correct": s.greedy, "logprob": s.logprob, "n_tokens": s.n_tokens}
    mean_losses = [s.mean_loss for s in scores]
    logprobs = [s.logprob for s in scores]
    pred = mean_losses.index(min(mean_losses))  # lowest mean loss, first on ties (nanochat)
    pred_sum = logprobs.index(max(logprobs))  # highest summed log-likelihood (lm-eval's acc)
    return {"correct": pred == item["gold"], "gold": item["gold"], "pred": pred, "pred_sum": pred_sum,
            "correct_sum": pred_sum == item["gold"], "logprobs": logprobs,
            "n_tokens": [s.n_tokens for s in scores], "mean_losses": mean_losses}


def evaluate_task(model: torch.nn.Module, tok, spec: TaskSpec, rows: Sequence[dict], limit: int | None = None,
                  shots: int | None = None, seed: int = DEFAULT_SEED, bos: int | None = None,
                  split: str = "core", records: bool = False, max_tokens: int = 4096,
                  progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Evaluate ``model`` on the first ``limit`` items (None: all) of one task's ``rows``.

    shots: few-shot examples per item (None: the task's count), drawn from all rows.
    bos: token id prepended to every prompt, or None. split: "core" (`core_requests`) or "lmeval"
    (`lmeval_requests`). max_tokens: padded tokens per forward pass (see `score_requests`).
    progress: ``progress(label, done, total)`` in requests (one per option).

    Returns a dict: task, type, shots, n (items scored), rows (items in the file), accuracy and
    centered (fractions), baseline (fraction), accuracy_sum (multiple choice and schema: accuracy
    under lm-eval's highest-summed-log-likelihood rule), seconds; with ``records``, "examples": one
    record per item (idx, correct; for multiple choice and schema also gold, pred, pred_sum,
    correct_sum, logprobs, n_tokens, mean_losses per option; for language modelling logprob, n_tokens).
    """
    if split not in ("core", "lmeval"):
        raise ValueError(f"split must be 'core' or 'lmeval', not {split!r}")
    t0 = time.perf_counter()
    n = len(rows) if limit is None else min(limit, len(rows))
    k = spec.shots if shots is None else shots
    requests, spans = [], []
    for idx in range(n):
        examples = [rows[i] for i in fewshot_indices(len(rows), idx, k, seed)]
        options = render_options(spec, rows[idx], examples)
        try:
            reqs = (core_requests(tok, options, spec.kind, bos) if split == "core"
                    else lmeval_requests(tok, options, bos))
        except ValueError as e:  # a char tokenizer meeting a character it lacks, or an empty prompt
            raise UserError(f"{spec.label}, item {idx}: the tokenizer cannot encode the prompt ({e})"
                            ) from None
        spans.append((len(requests), len(requests) + len(reqs)))
        requests += reqs
    report = None if progress is None else (lambda done, total: progress(spec.label, done, total))
    scores = score_requests(model, requests, max_tokens=max_tokens, progress=report)
    examples = [{"idx": idx, **_judge(spec, rows[idx], scores[a:b])} for idx, (a, b) in enumerate(spans)]
    acc = sum(e["correct"] for e in examples) / n
    out = {"task": spec.label, "type": spec.kind, "shots": min(k, len(rows) - 1), "n": n, "rows": len(rows),
           "accuracy": acc, "centered": centered(acc, spec.baseline), "baseline": spec.baseline / 100}
    if spec.kind != LM:
        out["accuracy_sum"] = sum(e["correct_sum"] for e in examples) / n
    # per-item correctness (0/1, file order) and which items: a paired test needs both
    out.update(seconds=time.perf_counter() - t0, correct=[int(e["correct"]) for e in examples],
               items=items_fingerprint([spec.label, len(rows), n]))
    if records:
        out["examples"] = examples
    return out


def evaluate_core(model: torch.nn.Module, tok, data_dir: str | Path, tasks: Sequence[str] | None = None,
                  limit: int | None = None, shots: int | None = None, seed: int = DEFAULT_SEED,
                  bos: bool = True, split: str = "core", records: bool = False, max_tokens: int = 4096,
                  progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Evaluate ``model`` (with tokenizer ``tok``) on CORE tasks read from ``data_dir``.

    tasks: task labels (see `CORE_TASKS`); None means all 22, and those whose file is absent are
        skipped and listed under "missing". A task named explicitly must have its file.
    limit: items per task (the first ones; few-shot examples still come from the whole file).
    shots: few-shot count for every task (None: each task's own). seed: few-shot seed (1234 as nanochat).
    bos: prepend the tokenizer's ``<|endoftext|>`` (when it has one) to every prompt.
    split, records, max_tokens, progress: as in `evaluate_task`.

    Returns a dict:
      "tasks": {label: evaluate_task's dict} in CORE order;
      "core": mean centred accuracy over the tasks evaluated (None if none was);
      "missing": [{"task", "path"}] the requested tasks whose file is absent (never dropped silently);
      "complete": all 22 CORE tasks evaluated on every item;
      "settings": the arguments that decide the figures.

    Raises:
        UserError: an unknown task name, a missing data directory, a missing file of a task named
            explicitly, a corrupt task file, a prompt the tokenizer cannot encode, or a tokenizer with
            more ids than the model.
    """
    root = task_dir(data_dir)
    if tok.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer has {tok.vocab_size} ids but the model only "
                        f"{model.config.vocab_size}; evaluate with the tokenizer the model was trained with")
    specs = list(CORE_TASKS) if tasks is None else [get_task(t) for t in tasks]
    bos_id = tok.eot_id if bos else None
    results, missing = {}, []
    for spec in specs:
        path = root / spec.path
        if not path.is_file():
            if tasks is not None:
                raise UserError(f"{path}: missing file of task {spec.label}")
            missing.append({"task": spec.label, "path": str(path)})
            continue
        rows = load_rows(path, spec.kind)
        results[spec.label] = evaluate_task(model, tok, spec, rows, limit, shots, seed, bos_id, split,
                                            records, max_tokens, progress)
    core = sum(r["centered"] for r in results.values()) / len(results) if results else None
    complete = len(results) == len(CORE_TASKS) and all(r["n"] == r["rows"] for r in results.values())
    return {"tasks": results, "core": core, "missing": missing, "complete": complete,
            "settings": {"data_dir": str(root), "limit": limit, "shots": shots, "seed": seed,
                         "bos": bos_id is not None, "split": split}}
