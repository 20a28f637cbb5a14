"""Chat tasks: lettered multiple choice, GSM8K through the calculator, HumanEval through the sandbox,
answer extraction, and a random tiny GPT end to end. Most tests drive a scripted model (its next
token is a Python function of the sequence so far), so the expected scores are exact."""

import gzip
import json
import string
from types import SimpleNamespace

import pytest
import torch
from helpers import CHAT_TEXT, randomize, shared_file

from gptforge.errors import UserError
from gptforge.eval import chat
from gptforge.eval.chat import choose_letters, evaluate_chat, extract_code, gsm8k_answer, last_number
from gptforge.eval.sandbox import run_python
from gptforge.tokenizer import SPECIAL_TOKENS, BPETokenizer, CharTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOK = CharTokenizer("".join(sorted(set(string.printable) - set("\x0b\x0c\r"))), SPECIAL_TOKENS)
SP = TOK.special_tokens
USER, USER_END, ASSISTANT, ASSISTANT_END = (SP[s] for s in ("<|user_start|>", "<|user_end|>",
                                                           "<|assistant_start|>", "<|assistant_end|>"))
CALL, CALL_END, OUT, OUT_END = (SP[s] for s in ("<|tool_call_start|>", "<|tool_call_end|>",
                                                "<|tool_output_start|>", "<|tool_output_end|>"))


class Scripted(torch.nn.Module):
    """A stand-in model: ``policy(tokens so far) -> next token id`` (greedy output = the policy).
    ``all_positions``: logits at every position (for right-padded batches), else at the last only."""

    def __init__(self, policy, all_positions=False, block_size=4096):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size, vocab_size=TOK.vocab_size)
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # the engine asks the parameters for the device
        self.policy, self.all_positions = policy, all_positions

    def forward(self, idx, targets=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, TOK.vocab_size)
        for b in range(B):
            row = idx[b].tolist()
            for t in range(T) if self.all_positions else [T - 1]:
                logits[b, t, self.policy(row[: t + 1])] = 10.0
        return logits, None


def turn(row):
    """(the last user turn's text, the reply tokens so far) of a sequence; None while a row of a
    ragged batch is still reading its prompt (the engine runs the model on it all the same)."""
    if ASSISTANT not in row:
        return None
    u = len(row) - 1 - row[::-1].index(USER)
    question = TOK.decode(row[u + 1: row.index(USER_END, u)])
    a = len(row) - 1 - row[::-1].index(ASSISTANT)
    return question, row[a + 1:]


def write_jsonl(path, rows, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())


# ---------------------------------------------------------------------------------------------
# lettered multiple choice

def test_letter_restriction_picks_a_letter_even_when_the_model_prefers_another_token(tmp_path):
    z, A, C = (TOK.encode(c)[0] for c in "zAC")

    class Favours(Scripted):
        def forward(self, idx, targets=None):
            logits = torch.zeros(*idx.shape, TOK.vocab_size)
            logits[..., z], logits[..., C], logits[..., A] = 100.0, 5.0, 1.0
            return logits, None

    model = Favours(None)
    prompts = [TOK.encode("short"), TOK.encode("a longer prompt, padded on the right")]
    assert choose_letters(model, prompts, [[A, C], [A]]) == [1, 0]
    rows = [{"query": "Question: Which?", "choices": ["a", "b", "c", "d"], "gold": g} for g in (2, 0, 2)]
    write_jsonl(tmp_path / "icl/world_knowledge/arc_easy.jsonl", rows)
    res = evaluate_chat(model, TOK, ["arc_easy"], tmp_path, batch_size=2, examples=True)["tasks"]["arc_easy"]
    assert [e["pred"] for e in res["examples"]] == ["C", "C", "C"]
    assert (res["n"], res["accuracy"], res["baseline"]) == (3, 2 / 3, 0.25)
    assert res["centered"] == pytest.approx((2 / 3 - 0.25) / 0.75)


def test_random_tiny_gpt_runs_arc_easy_and_mt_bench_end_to_end(tmp_path):
    shared_file("evals", "icl", "world_knowledge", "arc_easy.jsonl")
    from gptforge.models import build_model

    tok = BPETokenizer.train(CHAT_TEXT, vocab_size=320)
    model = randomize(build_model("gpt", vocab_size=tok.vocab_size, block_size=256, depth=1, n_embd=32,
                                  n_head=1))
    seen = []
    res = evaluate_chat(model, tok, ["arc_easy", "mt_bench"], limit=16, out_dir=tmp_path, max_new_tokens=8,
                        progress=lambda *a: seen.append(a))
    arc = res["tasks"]["arc_easy"]
    assert arc["n"] == 16 and arc["baseline"] == 0.25 and 0 <= arc["accuracy"] <= 1
    assert arc["centered"] == pytest.approx((arc["accuracy"] - 0.25) / 0.75)
    assert res["chatcore_tasks"] == ["arc_easy"] and res["chatcore"] == arc["centered"]
    assert seen[-1] == ("mt_bench", 16, 16) and ("arc_easy", 16, 16) in seen
    mt = res["tasks"]["mt_bench"]
    assert mt["accuracy"] is None and mt["n"] == 16
    saved = [json.loads(line) for line in open(mt["answers_file"])]
    assert len(saved) == 16 and all(len(s["answers"]) == 2 and len(s["turns"]) == 2 for s in saved)


# ---------------------------------------------------------------------------------------------
# answers

def test_answer_extraction():
    assert gsm8k_answer("She makes 9 * 2 = $18.\n#### 18") == "18"
    assert gsm8k_answer("#### 1,200 dollars") == "1200"
    assert gsm8k_answer("#### 3\nactually #### -4.5") == "-4.5"
    assert gsm8k_answer("so the answer is 42, not 41") == "41"  # no ####: the last number
    assert gsm8k_answer("no idea") is None
    assert last_number("The letter r appears 3 times in \"strawberry\".") == "3"
    assert extract_code("Sure:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n") == "x = 1\n"
    assert extract_code("    return 1") == "    return 1"
    ids = [*TOK.encode("2 + 2 = "), CALL, *TOK.encode("2+2"), CALL_END, OUT, *TOK.encode("4"), OUT_END,
           *TOK.encode("4"), ASSISTANT_END, *TOK.encode("junk")]
    parts = chat.reply_parts(ids, TOK)
    assert parts == [{"type": "text", "text": "2 + 2 = "}, {"type": "tool_call", "text": "2+2"},
                     {"type": "tool_output", "text": "4"}, {"type": "text", "text": "4"}]
    assert chat.text_of(parts) == "2 + 2 = 4"


def calculator_user(row):
    """Calls the calculator on the question's text, then copies the tool's output after '#### '."""
    if turn(row) is None:
        return 0
    question, reply = turn(row)
    plan = [CALL, *TOK.encode(question), CALL_END]
    if len(reply) < len(plan):
        return plan[len(reply)] if len(reply) < len(plan) else 0  # a stopped row is still fed
    if OUT_END not in reply:
        return 0  # the engine is forcing the tool's output; what we say is ignored
    output = reply[reply.index(OUT) + 1: reply.index(OUT_END)]
    final = [*TOK.encode("So\n#### "), *output, ASSISTANT_END]
    k = len(reply) - reply.index(OUT_END) - 1
    return final[k] if k < len(final) else 0  # a row that stopped is still fed until the batch ends


def test_gsm8k_is_scored_on_the_reply_that_uses_the_calculator(tmp_path):
    rows = [{"question": "16-3-4", "answer": "16 - 3 - 4 = <<16-3-4=9>>9\n#### 9"},
            {"question": "9*2", "answer": "#### 18"},
            {"question": "(1200+34)*1", "answer": "#### 1,234"},
            {"question": "7+1", "answer": "#### 99"}]  # a wrong reference: scored wrong
    write_jsonl(tmp_path / "gsm8k/test.jsonl", rows)
    res = evaluate_chat(Scripted(calculator_user), TOK, ["gsm8k"], tmp_path, batch_size=3, examples=True)
    g = res["tasks"]["gsm8k"]
    assert [e["pred"] for e in g["examples"]] == ["9", "18", "1234", "8"]
    assert [e["correct"] for e in g["examples"]] == [True, True, True, False]
    assert g["accuracy"] == 0.75 and g["baseline"] == 0 and g["centered"] == 0.75
    first = g["examples"][0]["reply"]
    assert first[:2] == [{"type": "tool_call", "text": "16-3-4"}, {"type": "tool_output", "text": "9"}]
    assert g["examples"][0]["stopped"]


# ---------------------------------------------------------------------------------------------
# HumanEval

def humaneval_problems(n):
    path = shared_file("evals", "humaneval", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail_in_the_sandbox():
    for p in humaneval_problems(3):
        body = run_python(chat.humaneval_program(p, p["canonical_solution"]))
        assert body.passed, body.stderr
        whole = f"Here it is:\n```python\n{p['prompt']}{p['canonical_solution']}```\nHope that helps."
        assert run_python(chat.humaneval_program(p, whole)).passed
        wrong = run_python(chat.humaneval_program(p, "return None"))  # flush left: indented as a body
        assert wrong.status == "failed" and "AssertionError" in wrong.stderr


def test_humaneval_task_generates_extracts_and_runs(tmp_path):
    problems = humaneval_problems(3)
    answers = {p["prompt"].strip(): f"```python\n{p['prompt']}{p['canonical_solution']}```"
               for p in problems[:2]}

    def coder(row):
        if turn(row) is None:
            return 0
        question, reply = turn(row)
        prompt = question.split("```python\n", 1)[1].rsplit("\n```", 1)[0]
        plan = [*TOK.encode(answers.get(prompt, "```python\ndef nope():\n    pass\n```")), ASSISTANT_END]
        return plan[len(reply)] if len(reply) < len(plan) else 0  # a stopped row is still fed

    write_jsonl(tmp_path / "humaneval/HumanEval.jsonl.gz", problems, gz=True)
    res = evaluate_chat(Scripted(coder), TOK, ["humaneval"], tmp_path, max_new_tokens=1200, examples=True)
    h = res["tasks"]["humaneval"]
    assert [e["status"] for e in h["examples"]] == ["passed", "passed", "failed"]
    assert h["accuracy"] == pytest.approx(2 / 3) and h["baseline"] == 0
    assert isinstance(h["sandbox"], list)  # the fences that held, reported with the score


# ---------------------------------------------------------------------------------------------
# errors

def test_user_errors_are_one_clear_line(tmp_path):
    model = Scripted(lambda row: 0)
    with pytest.raises(UserError, match="unknown chat task.*mmlu.*choose from arc_easy"):
        evaluate_chat(model, TOK, ["arc_easy", "mmlu"], tmp_path)
    with pytest.raises(UserError, match=f"{tmp_path}/gsm8k/test.jsonl: gsm8k data not found") as e:
        evaluate_chat(model, TOK, ["gsm8k"], tmp_path)
    assert "\n" not in str(e.value)
    plain = CharTokenizer(string.ascii_letters)
    with pytest.raises(UserError, match="no chat tokens"):
        evaluate_chat(model, plain, ["arc_easy"], tmp_path)
    with pytest.raises(UserError, match="limit must be >= 1"):
        evaluate_chat(model, TOK, ["arithmetic"], tmp_path, limit=0)


# ---------------------------------------------------------------------------------------------
# synthetic tasks: template-seen and -unseen phrasings, and the social family

def test_synthetic_tasks_score_seen_and_unseen_phrasings_apart_and_social_replies_in_kind(tmp_path):
    """A model that answers "Hello! 7" to everything: right on the greetings and on the arithmetic
    items whose answer is 7, wrong on every other social item (a reply not in kind)."""
    from gptforge.chat import tasks

    def hello_seven(row):
        if turn(row) is None:
            return 0
        plan = [*TOK.encode("Hello! 7"), ASSISTANT_END]
        k = len(turn(row)[1])
        return plan[k] if k < len(plan) else 0

    res = evaluate_chat(Scripted(hello_seven), TOK, ["arithmetic", "social"], tmp_path, limit=40,
                        batch_size=8)
    social = tasks.items("social", "test", 40)
    s = res["tasks"]["social"]
    assert s["n"] == len(social) and s["baseline"] == 0
    assert s["correct"] == [int(ref == "greeting") for _, ref, _ in social] and 0 < sum(s["correct"]) < s["n"]
    a = res["tasks"]["arithmetic"]
    seen, unseen = a["by_phrasing"]["seen"], a["by_phrasing"]["unseen"]
    assert (a["n"], seen["n"], unseen["n"]) == (40, 20, 20)
    want = [ref == "7" for _, ref, _ in tasks.items("arithmetic", "test", 20, phrasings="train")]
    assert seen["correct"] == [int(w) for w in want]
    want = [ref == "7" for _, ref, _ in tasks.items("arithmetic", "test", 20, phrasings="test")]
    assert unseen["correct"] == [int(w) for w in want]
    assert a["correct"] == seen["correct"] + unseen["correct"]
