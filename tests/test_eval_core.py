"""gptforge.eval: the log-likelihood scorer, the CORE tasks (few-shot sampling, prompts, token spans,
scoring, centred accuracy, missing tasks, errors) and bits per byte. Tiny models and char tokenizers
keep it fast; the random-baseline test reads ARC-Easy and PIQA from ../shared/data."""

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import needs_shared, randomize, shared_file

from gptforge.data.shards import prepare
from gptforge.errors import UserError
from gptforge.eval.bpb import bpb_shards, bpb_text
from gptforge.eval.core import (
    CORE_TASKS,
    centered,
    core_requests,
    evaluate_core,
    evaluate_task,
    fewshot_indices,
    get_task,
    lmeval_requests,
    load_rows,
    render_options,
)
from gptforge.eval.loglik import Request, score_requests
from gptforge.models import GPT, gpt_config
from gptforge.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MC_ROWS = [
    {"query": "Question: What do cows drink?", "choices": ["milk", "water"], "gold": 1},
    {"query": "Question: What is red?", "choices": ["a cherry", "the sky"], "gold": 0},
    {"query": "Question: Which is a cat?", "choices": ["a dog", "a kitten", "a car"], "gold": 1},
]
SCHEMA_ROWS = [
    {"context_options": ["Anna beat Bob so Anna", "Anna beat Bob so Bob"], "continuation": "was sad.",
     "gold": 1},
    {"context_options": ["The ball hit the cup so the ball", "The ball hit the cup so the cup"],
     "continuation": "fell over.", "gold": 1},
]
LM_ROWS = [
    {"context": "Two plus two is ", "continuation": "four"},
    {"context": "The capital of France is\n", "continuation": "Paris"},
    {"context": "A B C D", "continuation": "E"},
]


def tiny_gpt(vocab: int, block: int, seed: int = 0) -> GPT:
    """A one-layer modern GPT with random, non-degenerate weights, in eval mode."""
    config = gpt_config("modern", depth=1, n_embd=32, n_head=2, vocab_size=vocab, block_size=block)
    return randomize(GPT(config), seed)


def char_tok(*texts: str) -> CharTokenizer:
    return CharTokenizer.train(texts)  # with <|endoftext|>, the BOS of every prompt


def rows_text(rows) -> str:
    """Every string in ``rows`` and the delimiters: what a char tokenizer must cover."""
    strings = lambda v: [v] if isinstance(v, str) else [s for x in v for s in strings(x)] if isinstance(
        v, list) else []
    return "\nAnswer: " + "".join(s for r in rows for v in r.values() for s in strings(v))


# --- few-shot sampling and prompts ------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 60, 3000])
def test_fewshot_is_nanochats_sample_deterministic_and_never_the_item(n):
    for idx in sorted({0, 1, n // 2, n - 1}):
        k = 10
        got = fewshot_indices(n, idx, k)
        # nanochat core_eval: random.Random(1234 + idx).sample(all other indices, k)
        want = random.Random(1234 + idx).sample([i for i in range(n) if i != idx], min(k, n - 1))
        assert got == want == fewshot_indices(n, idx, k)
        assert idx not in got and len(set(got)) == len(got) == min(k, n - 1)
    assert fewshot_indices(n, 0, 10, seed=7) == random.Random(7).sample(range(1, n), min(10, n - 1))
    assert fewshot_indices(n, 0, 0) == []


def test_render_multiple_choice_with_a_shot():
    spec = get_task("arc_easy")  # delimiter "\nAnswer: "
    options = render_options(spec, MC_ROWS[2], [MC_ROWS[0]])
    shot = "Question: What do cows drink?\nAnswer: water\n\n"
    assert options == [(shot + "Question: Which is a cat?\nAnswer: ", "a dog"),
                       (shot + "Question: Which is a cat?\nAnswer: ", "a kitten"),
                       (shot + "Question: Which is a cat?\nAnswer: ", "a car")]


def test_render_schema_with_a_shot():
    spec = get_task("winogrande")  # delimiter " "
    options = render_options(spec, SCHEMA_ROWS[1], [SCHEMA_ROWS[0]])
    shot = "Anna beat Bob so Bob was sad.\n\n"
    assert options == [(shot + "The ball hit the cup so the ball ", "fell over."),
                       (shot + "The ball hit the cup so the cup ", "fell over.")]


def test_render_language_modelling_strips_contexts():
    spec = get_task("jeopardy")  # delimiter "\nAnswer: "
    shots = "Two plus two is\nAnswer: four\n\nA B C D\nAnswer: E\n\n"
    assert render_options(spec, LM_ROWS[1], [LM_ROWS[0], LM_ROWS[2]]) == [
        (shots + "The capital of France is\nAnswer: ", "Paris")]
    assert render_options(get_task("lambada_openai"), LM_ROWS[0]) == [("Two plus two is ", "four")]


def test_token_spans_follow_nanochat():
    tok = char_tok("Q: pet? cat car The dog ran. A B C")
    eot = tok.eot_id
    enc = tok.encode_ordinary
    # multiple choice: the shared "ca" of "cat"/"car" is context, only the differing token is scored
    reqs = core_requests(tok, [("Q: pet? ", "cat"), ("Q: pet? ", "car")], "multiple_choice", eot)
    assert [r.context for r in reqs] == [[eot] + enc("Q: pet? ca")] * 2
    assert [r.continuation for r in reqs] == [enc("t"), enc("r")]
    # schema: the common suffix is scored (here it reaches back into the options: " ran." and "n ran.")
    reqs = core_requests(tok, [("The dog ", "ran."), ("The can ", "ran.")], "schema", None)
    assert [r.continuation for r in reqs] == [enc(" ran.")] * 2
    assert [r.context for r in reqs] == [enc("The dog"), enc("The can")]
    # language modelling: everything after the right-stripped context
    (req,) = core_requests(tok, [("A B ", "C")], "language_modeling", eot)
    assert (req.context, req.continuation) == ([eot] + enc("A B"), enc(" C"))
    # lm-eval's split: trailing context whitespace moves into the continuation, no common-prefix search
    reqs = lmeval_requests(tok, [("Q: pet? ", "cat"), ("Q: pet? ", "car")], None)
    assert [(r.context, r.continuation) for r in reqs] == [(enc("Q: pet?"), enc(" cat")),
                                                           (enc("Q: pet?"), enc(" car"))]


# --- the scorer -------------------------------------------------------------------------------


def direct_score(model, req: Request) -> tuple[float, int, bool]:
    """Independent reference: log_softmax over the whole (left-cropped) sequence, one request at a time."""
    T = model.config.block_size
    seq = (list(req.context) + list(req.continuation))[-(T + 1):]
    with torch.no_grad():
        logits, _ = model(torch.tensor([seq[:-1]]))
    logp = torch.log_softmax(logits[0].double(), dim=-1)  # (L, V)
    n = min(len(req.continuation), len(seq) - 1)
    targets = torch.tensor(seq[1:])
    per_token = logp[torch.arange(len(seq) - 1), targets][-n:]
    greedy = bool((logp.argmax(-1) == targets)[-n:].all())
    return float(per_token.sum()), n, greedy


def test_scorer_equals_direct_log_softmax_batched_or_alone():
    V, T = 23, 16
    model = tiny_gpt(V, T)
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(0, V, (n,), generator=g).tolist()
    # short, long (context cropped from the left), continuation longer than the block, one-token ones
    sizes = [(1, 1), (3, 4), (10, 2), (20, 5), (5, 17), (1, 30), (15, 1), (7, 7), (2, 9), (40, 3)]
    reqs = [Request(rand(c), rand(k)) for c, k in sizes]
    # a request the model gets greedily right: its own argmax continuation
    ctx = rand(4)
    with torch.no_grad():
        nxt = int(model(torch.tensor([ctx]))[0][0, -1].argmax())
    reqs.append(Request(ctx, [nxt]))
    batched = score_requests(model, reqs, max_tokens=40)
    alone = [score_requests(model, [r])[0] for r in reqs]
    for r, b, a in zip(reqs, batched, alone, strict=True):
        lp, n, greedy = direct_score(model, r)
        assert b.n_tokens == a.n_tokens == n
        assert b.logprob == pytest.approx(lp, abs=1e-4) and a.logprob == pytest.approx(b.logprob, abs=1e-5)
        assert b.greedy == a.greedy == greedy
        assert b.mean_loss == pytest.approx(-lp / n, abs=1e-4)
    assert batched[-1].greedy and batched[4].n_tokens == T  # 17 continuation tokens, 16 scored
    with pytest.raises(ValueError):
        score_requests(model, [Request([], [1])])


# --- CORE -------------------------------------------------------------------------------------


def test_centered_accuracy():
    assert centered(0.25, 25) == 0
    assert centered(1.0, 25) == 1
    assert centered(0.5, 0) == 0.5
    assert centered(0.81, 62) == pytest.approx((0.81 - 0.62) / 0.38)
    assert centered(0.2, 25) < 0  # below chance


def test_core_table():
    assert len(CORE_TASKS) == 22 and len({t.label for t in CORE_TASKS}) == 22
    assert {t.kind for t in CORE_TASKS} == {"multiple_choice", "schema", "language_modeling"}
    assert get_task("bigbench_language_identification").baseline == 9.1
    assert get_task("boolq").delimiter == "\nAnswer: " and get_task("boolq").shots == 10


@pytest.fixture
def small_task_dir(tmp_path):
    """copa (multiple choice), winograd (schema) and lambada (language modelling) files, nothing else."""
    for spec, rows in [(get_task("copa"), MC_ROWS), (get_task("winograd"), SCHEMA_ROWS),
                       (get_task("lambada_openai"), LM_ROWS)]:
        f = tmp_path / spec.path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_evaluate_core_reports_missing_tasks_and_records(small_task_dir):
    tok = char_tok(rows_text(MC_ROWS + SCHEMA_ROWS + LM_ROWS))
    model = tiny_gpt(tok.vocab_size, 64)
    seen = []
    res = evaluate_core(model, tok, small_task_dir, records=True, progress=lambda *a: seen.append(a))
    assert list(res["tasks"]) == ["copa", "lambada_openai", "winograd"]  # CORE order
    assert sorted(m["task"] for m in res["missing"]) == sorted(
        t.label for t in CORE_TASKS if t.label not in ("copa", "lambada_openai", "winograd"))
    assert not res["complete"]
    assert res["core"] == pytest.approx(sum(r["centered"] for r in res["tasks"].values()) / 3)
    copa = res["tasks"]["copa"]
    assert copa["n"] == 3 and copa["baseline"] == 0.5 and copa["seconds"] > 0
    for ex, row in zip(copa["examples"], MC_ROWS, strict=True):
        assert len(ex["logprobs"]) == len(row["choices"])
        assert ex["pred"] == int(np.argmin(ex["mean_losses"]))
        assert ex["correct"] == (ex["pred"] == row["gold"])
        assert ex["pred_sum"] == int(np.argmax(ex["logprobs"]))
    assert copa["accuracy"] == sum(e["correct"] for e in copa["examples"]) / 3
    assert all(isinstance(e["correct"], bool) for e in res["tasks"]["lambada_openai"]["examples"])
    assert seen and seen[-1][1] == seen[-1][2]  # progress reaches done == total
    # explicitly named: its file must exist; limit and shots apply
    res = evaluate_core(model, tok, small_task_dir, tasks=["winograd"], limit=1, shots=1)
    wino = res["tasks"]["winograd"]
    assert wino["n"] == 1 and wino["shots"] == 1 and res["missing"] == []
    with pytest.raises(UserError, match="missing file of task piqa"):
        evaluate_core(model, tok, small_task_dir, tasks=["piqa"])


def test_user_errors_are_one_clear_line(tmp_path, small_task_dir):
    tok = char_tok(rows_text(MC_ROWS))
    model = tiny_gpt(tok.vocab_size, 32)
    bad_name = lambda: evaluate_core(model, tok, small_task_dir, tasks=["arc_ezy"])
    for call, match in [(bad_name, "unknown CORE"),
                        (lambda: evaluate_core(model, tok, tmp_path / "nope"), "no such task directory"),
                        (lambda: evaluate_core(model, char_tok("abc"), small_task_dir), "cannot encode"),
                        (lambda: evaluate_core(tiny_gpt(3, 8), tok, small_task_dir), "tokenizer has")]:
        with pytest.raises(UserError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "choices": ["a", "b"], "gold": 2}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: gold 2"):
        load_rows(bad, "multiple_choice")


@needs_shared
@pytest.mark.parametrize("label", ["arc_easy", "piqa"])
def test_random_model_scores_chance(label):
    """Issue 12: a randomly initialised model is within binomial noise (3 sigma) of the random baseline."""
    spec = get_task(label)
    rows = load_rows(shared_file("evals", "icl", spec.path), spec.kind)
    tok = char_tok(rows_text(rows))  # every character of the file
    n, b = 200, spec.baseline / 100
    for seed in (0, 1):  # two independent random models
        model = tiny_gpt(tok.vocab_size, 128, seed=seed)
        res = evaluate_task(model, tok, spec, rows, limit=n, bos=tok.eot_id, max_tokens=8192)
        assert res["n"] == n and res["shots"] == spec.shots
        assert abs(res["accuracy"] - b) < 3 * math.sqrt(b * (1 - b) / n), res["accuracy"]


# --- bits per byte ----------------------------------------------------------------------------

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak. \u00e9t\u00e9!\n" * 3


def test_bpb_text_equals_direct_computation(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    tok = char_tok(TEXT)
    ids = [tok.eot_id] + tok.encode_ordinary(TEXT)
    nbytes = len(TEXT.encode("utf-8"))  # the two é are 2 bytes each
    for T in (len(ids), 32):  # one window; several windows, the last one short
        model = tiny_gpt(tok.vocab_size, T)
        nats = 0.0
        with torch.no_grad():
            for o in range(0, len(ids) - 1, T):
                w = torch.tensor(ids[o:o + T + 1])
                logits, _ = model(w[None, :-1])
                nats += F.cross_entropy(logits[0].double(), w[1:], reduction="sum").item()
        out = bpb_text(model, tok, f, batch_size=3)
        assert out["tokens"] == len(ids) - 1 and out["bytes"] == nbytes
        assert out["bpb"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)


def test_bpb_shards_and_errors(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT * 4)
    tok = char_tok(TEXT)
    prepare(str(tmp_path / "c.txt"), tok, tmp_path / "data", val_fraction=0.5, workers=1, progress=False)
    model = tiny_gpt(tok.vocab_size, 16)
    val = np.fromfile(tmp_path / "data" / "val.bin", dtype=np.uint16).astype(np.int64)
    nats = 0.0
    with torch.no_grad():
        for o in range(0, len(val) - 1, 16):
            w = torch.from_numpy(val[o:o + 17])
            nats += F.cross_entropy(model(w[None, :-1])[0][0].double(), w[1:], reduction="sum").item()
    nbytes = int(tok.token_bytes()[val[1:]].sum())
    out = bpb_shards(model, tmp_path / "data", tok=tok)
    assert out["split"] == "val" and out["tokens"] == len(val) - 1 and out["bytes"] == nbytes
    assert out["bpb"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)
    with pytest.raises(UserError, match="no such shard directory"):
        bpb_shards(model, tmp_path / "nothing")
    (tmp_path / "data" / "meta.json").write_text("{")
    with pytest.raises(UserError):
        bpb_shards(model, tmp_path / "data")
    with pytest.raises(UserError, match="no such text file"):
        bpb_text(model, tok, tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UserError, match="not UTF-8"):
        bpb_text(model, tok, tmp_path / "latin1.txt")
    with pytest.raises(UserError, match="tokenizer has"):
        bpb_text(tiny_gpt(tok.vocab_size + 1, 16), tok, tmp_path / "c.txt")
