"""lm-evaluation-harness interop: task configs that make lm-eval score *our* prompts on the local files.

    >>> write_task_configs(tmp / "tasks", ["arc_easy", "piqa"], "../shared/data/evals/icl", tmp / "cache")
    >>> TaskManager(include_path=str(tmp / "tasks"), include_defaults=False)   # tasks gf_arc_easy, gf_piqa

Each config reads a CORE task's JSONL file itself (``dataset_path: json``) and renders the zero-shot
prompt `gptforge.eval.core.render_options` renders, so the two tools see the same strings and their
log-likelihoods can be compared request by request (tests/test_eval_lmeval.py; bench/eval.py times
them). lm-eval builds a multiple-choice request as (doc_to_text, target_delimiter + choice) with a
space delimiter, and a loglikelihood request as (doc_to_text, doc_to_target) as written. Only
zero-shot prompts of the multiple-choice and language-modelling types are written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gptforge.errors import UserError
from gptforge.eval.core import get_task

# One lm-eval task over our JSON lines file; {body} is what differs between the two kinds.
TASK_YAML = """task: gf_{label}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
  cache_dir: {cache}
test_split: test
{body}metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
MC_BODY = """output_type: multiple_choice
doc_to_text: "{{{{query}}}}{text_end}"
doc_to_target: gold
doc_to_choice: choices
"""
LM_BODY = """output_type: loglikelihood
doc_to_text: "{{{{context | trim}}}}"
doc_to_target: "{{{{' ' + continuation}}}}"
"""


def write_task_configs(out_dir: str | os.PathLike, labels: list[str], icl_dir: str | os.PathLike,
                       cache_dir: str | os.PathLike) -> list[str]:
    """Write one lm-eval YAML per CORE task label into ``out_dir``; return the lm-eval task names
    (``gf_<label>``). ``cache_dir``: where lm-eval's ``datasets`` keeps its copy of the JSON files.

    Raises:
        UserError: an unknown label, a schema task (not written), or a missing task file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for label in labels:
        spec = get_task(label)
        path = Path(icl_dir) / spec.path
        if not path.is_file():
            raise UserError(f"{path}: missing file of task {label}")
        if spec.kind == "schema":
            raise UserError(f"{label}: schema tasks have no lm-eval config here (their options differ "
                            "in the context, not the continuation)")
        if spec.kind == "language_modeling":
            body = LM_BODY.format()
        else:  # the delimiter's trailing space is lm-eval's target_delimiter
            body = MC_BODY.format(text_end=spec.delimiter.rstrip(" ").replace("\n", "\\n"))
        text = TASK_YAML.format(label=label, path=path, cache=cache_dir, body=body)
        (out / f"{label}.yaml").write_text(text)
        names.append(f"gf_{label}")
    return names


def hf_gpt2_tokenizer(gpt2_dir: str | os.PathLike):
    """transformers' GPT2TokenizerFast from OpenAI's original ``encoder.json`` and ``vocab.bpe`` in
    ``gpt2_dir`` (no hub access): lm-eval's tokenizer for a GPT-2-vocabulary model."""
    import transformers

    d = Path(gpt2_dir)
    vocab = json.loads((d / "encoder.json").read_text(encoding="utf-8"))
    lines = (d / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # after "#version"
    merges = [tuple(line.split(" ")) for line in lines if line]
    return transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)
