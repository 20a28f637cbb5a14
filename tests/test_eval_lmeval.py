"""Cross-check of gptforge.eval against lm-evaluation-harness (PyPI lm-eval 0.4.13, a dev extra).

One small GPT-2-architecture model with random weights is exported to a Hugging Face folder
(gptforge.models.hf.save_hf) and evaluated twice, zero-shot, on the first rows of the same local
ARC-Easy, PIQA and LAMBADA files:

- by lm-eval: its HFLM on the exported folder, with the GPT-2 tokenizer built by transformers from
  OpenAI's encoder.json / vocab.bpe, and task configs (written below) whose prompts are ours;
- by us: ``evaluate_core(..., shots=0, bos=False, split="lmeval")`` on our model with our r50k
  tokenizer (tiktoken ranks): the same prompts, the requests split the way lm-eval splits them.

Per example, the summed log-likelihood of every option must agree within 1e-4 nats (or two float32
steps of lm-eval's value where that is coarser: lm-eval returns float32 sums, whose resolution is
1.2e-4 at 1024 nats and more above; random weights make long PIQA options reach that) and the
accuracies must be identical: lm-eval's multiple-choice ``acc`` (highest summed log-likelihood) against
our ``accuracy_sum``, and its LAMBADA ``acc`` (greedy match) against ours. CORE's own decision rule
(lowest mean loss per token, nanochat's) is not what lm-eval computes, so it is not compared here.
The block size is 80, so most LAMBADA passages (and a few PIQA prompts) are cropped from the left by both.
Offline: nothing is downloaded (HF_*_OFFLINE set; the datasets cache lives in a temporary folder).
"""

import os

import numpy as np
import pytest
from helpers import needs_shared, randomize, shared_file

from gptforge.eval.core import evaluate_core, get_task, load_rows, render_options
from gptforge.eval.lmeval import hf_gpt2_tokenizer, write_task_configs
from gptforge.models import GPT, gpt_config
from gptforge.models.hf import save_hf
from gptforge.tokenizer import load_tokenizer

pytestmark = [needs_shared, pytest.mark.usefixtures("one_torch_thread")]

N = 24  # rows per task
BLOCK = 80
TASKS = ("arc_easy", "piqa", "lambada_openai")

def close(mine: float, theirs: float) -> bool:
    """Within 1e-4 nats, or two float32 steps of lm-eval's (float32) value where that is coarser."""
    return abs(mine - theirs) <= max(1e-4, 2 * float(np.spacing(np.float32(abs(theirs)))))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(ours, theirs): evaluate_core's result and lm-eval's samples per task label."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    pytest.importorskip("transformers")
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tmp = tmp_path_factory.mktemp("lmeval")
    icl = shared_file("evals", "icl")
    model = randomize(GPT(gpt_config("gpt2", depth=2, n_embd=64, block_size=BLOCK)), seed=3)
    tok = load_tokenizer(shared_file("tiktoken", "r50k_base.tiktoken"))
    ours = evaluate_core(model, tok, icl, tasks=TASKS, limit=N, shots=0, bos=False, split="lmeval",
                         records=True)

    names = write_task_configs(tmp / "tasks", list(TASKS), icl, tmp / "datasets")
    lm = HFLM(pretrained=str(save_hf(model, tmp / "hf")), tokenizer=hf_gpt2_tokenizer(shared_file("gpt2")),
              batch_size=16, max_length=BLOCK, device="cpu")
    # include_defaults=False: indexing lm-eval's ~13,000 built-in task files would take ~30 s
    manager = TaskManager(include_path=str(tmp / "tasks"), include_defaults=False)
    res = simple_evaluate(model=lm, tasks=names, num_fewshot=0, limit=N,
                          log_samples=True, task_manager=manager)
    theirs = {t: sorted(res["samples"][f"gf_{t}"], key=lambda s: s["doc_id"]) for t in TASKS}
    return ours, theirs, {t: res["results"][f"gf_{t}"]["acc,none"] for t in TASKS}


@pytest.mark.parametrize("label", TASKS)
def test_prompts_are_lmeval_requests(runs, label):
    """lm-eval's (context, continuation) strings are ours, after its trailing-whitespace move."""
    _, theirs, _ = runs
    spec = get_task(label)
    rows = load_rows(shared_file("evals", "icl", spec.path), spec.kind)
    for sample in theirs[label]:
        mine = []
        for context, continuation in render_options(spec, rows[sample["doc_id"]]):
            stripped = context.rstrip()
            mine.append((stripped, context[len(stripped):] + continuation))
        assert [tuple(a) for a in sample["arguments"]] == mine


@pytest.mark.parametrize("label", TASKS)
def test_loglikelihoods_and_accuracy_match_lmeval(runs, label):
    ours, theirs, their_acc = runs
    mine = ours["tasks"][label]
    assert mine["n"] == len(theirs[label]) == N
    for ex, sample in zip(mine["examples"], theirs[label], strict=True):
        assert ex["idx"] == sample["doc_id"]
        resps = [r[0] if isinstance(r[0], tuple | list) else r for r in sample["resps"]]  # [[(ll, greedy)]]
        their_ll = [float(r[0]) for r in resps]
        if label == "lambada_openai":
            assert close(ex["logprob"], their_ll[0]), (ex["logprob"], their_ll[0])
            assert ex["correct"] == bool(resps[0][1]) == bool(sample["acc"])
        else:
            assert len(ex["logprobs"]) == len(their_ll)
            pairs = list(zip(ex["logprobs"], their_ll, strict=True))
            assert all(close(a, b) for a, b in pairs), pairs
            assert ex["correct_sum"] == bool(sample["acc"])
    key = "accuracy" if label == "lambada_openai" else "accuracy_sum"
    assert mine[key] == their_acc[label]
    # the log-likelihoods are far from uniform: a check on them means something
    assert min(min(e.get("logprobs", [e.get("logprob")])) for e in mine["examples"]) < -20


def test_some_lambada_prompts_were_cropped(runs):
    """Both sides crop contexts longer than the block from the left; make sure the check covered that."""
    ours, _, _ = runs
    tok = load_tokenizer(shared_file("tiktoken", "r50k_base.tiktoken"))
    rows = load_rows(shared_file("evals", "icl", get_task("lambada_openai").path), "language_modeling")
    assert any(len(tok.encode_ordinary(r["context"] + " " + r["continuation"])) > BLOCK + 1 for r in rows[:N])

