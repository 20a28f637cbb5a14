"""RL on verifiable rewards: group advantages, which tokens get a gradient, a tiny model learning a
toy task on the training loop (reward rises), bit-exact resume, and the command."""

import json

import numpy as np
import pytest
import torch
from helpers import tiny_chat_base

from gptforge.chat.render import ChatTokens, render_for_completion
from gptforge.checkpoint import load_checkpoint
from gptforge.finetune.logprobs import token_logprobs
from gptforge.finetune.rl import Task, group_advantages, policy_gradient_loss, rl_data, rollout_rows
from gptforge.train import Logger, make_config, resume_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_chat_base(tmp_path_factory.mktemp("rlbase"), 64)


def test_advantages_sum_to_zero_within_each_group():
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1], dtype=torch.float32)  # groups of 4
    adv = group_advantages(rewards, 4)
    assert adv.view(3, 4).sum(dim=1).abs().max() < 1e-6
    assert adv[:4].tolist() == [0.5, -0.5, -0.5, 0.5] and adv[4:8].tolist() == [0.0] * 4  # all right: nothing
    g = rewards.view(3, 4).numpy()
    want = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)  # GRPO: sample std
    std = group_advantages(rewards, 4, std=True)
    assert std.view(3, 4).numpy() == pytest.approx(want, abs=1e-5)
    assert std.view(3, 4).sum(dim=1).abs().max() < 1e-5
    with pytest.raises(ValueError, match="groups of 5"):
        group_advantages(rewards, 5)


class KeepLogits(torch.nn.Module):
    """The model, keeping the logits of its last forward pass and their gradient."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits, _ = self.model(x)
        logits.retain_grad()
        self.logits = logits
        return logits, None


def test_prompt_and_tool_output_tokens_get_no_gradient(base):
    run, tok = base
    model, _ = load_checkpoint(run)
    reference, _ = load_checkpoint(run)
    with torch.no_grad():  # the policy a little away from the reference, so the KL term has a gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t = ChatTokens(tok)
    prompt = render_for_completion([{"role": "user", "content": "What is 2 and 3?"}], tok)
    call, out, text = tok.encode_ordinary("2+3"), tok.encode_ordinary("5"), tok.encode_ordinary("It is 5.")
    reply = [t.tool_call_start, *call, t.tool_call_end, t.tool_output_start, *out, t.tool_output_end, *text,
             t.assistant_end]
    sampled = [True] * (len(call) + 2) + [False] * (len(out) + 2) + [True] * (len(text) + 1)
    x, y = (torch.tensor([v]) for v in rollout_rows(prompt, reply, sampled, 48, t.eot))
    scored = tok.decode([int(v) for v in y[0] if v != -1])
    assert scored == "<|tool_call_start|>2+3<|tool_call_end|>It is 5.<|assistant_end|>"
    policy = KeepLogits(model)
    with torch.no_grad():
        ref_logp = token_logprobs(reference, x, y)
    loss, kl = policy_gradient_loss(token_logprobs(policy, x, y), y, torch.tensor([0.7]), ref_logp, kl=0.5)
    loss.backward()
    grad = policy.logits.grad[0].abs().sum(dim=-1)  # (T,): the gradient reaching each position's logits
    assert kl > 0 and (grad[y[0] == -1] == 0).all() and (grad[y[0] != -1] > 0).all()
    assert int((y[0] != -1).sum()) == sum(sampled)


def vowel_task(n_train=64, n_test=8) -> Task:
    """A toy verifiable task a 2-step model gets right about a third of the time by chance: the
    reply's text must begin with a vowel (learnable: the first sampled token's distribution)."""
    def prompt(i):
        return [{"role": "user", "content": f"Say a word, number {i}."}]

    def correct(parts, reference):
        first = "".join(p["text"] for p in parts if p["type"] == "text").lstrip()[:1].lower()
        return first != "" and first in "aeiou"

    return Task("vowel", [(prompt(i), "") for i in range(n_train)], [(prompt(-i), "") for i in range(n_test)],
                correct, max_new_tokens=6)


def rl_cfg(run, out, **kw):
    return make_config({"task": "rl", "data": "vowel", "init_from": str(run), "out": str(out), "depth": 1,
                        "block_size": 64, "batch_size": 32, "rl_samples": 8, "max_steps": 24,
                        "eval_interval": 12, "threads": 1, "optimizer": "adamw", "lr": 1e-2,
                        "weight_decay": 0.0, "warmup_steps": 0, "schedule": "wsd", "warmdown_frac": 0.0,
                        "rl_eval_items": 8, "progress": "none", "model": {"n_embd": 32, "n_head": 1}, **kw})


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rl_learns_a_toy_task_and_resumes_bit_exactly(base, tmp_path):
    run, tok = base
    tok_json = next((run / "ckpt").glob("step_*")) / "tokenizer.json"

    def data(c):
        return rl_data(c, tok, tok_json, [vowel_task()], load_checkpoint(run)[0])

    cfg = rl_cfg(run, tmp_path / "a")
    summary = train(cfg, data=data(cfg), logger=Logger("none"))
    recs = records(tmp_path / "a")
    steps = [r for r in recs if "train_reward" in r]
    assert len(steps) == 24
    assert all({"train_reply_tokens", "train_kl", "train_mixed"} <= set(r) for r in steps)
    reward = [r["train_reward"] for r in steps]
    first, last = np.mean(reward[:6]), np.mean(reward[-6:])
    evals = [r for r in recs if "val_pass1" in r]
    assert [r["step"] for r in evals] == [0, 12, 24]
    assert last > first + 0.3, (first, last)  # the reward rises
    assert evals[-1]["val_pass1"] > evals[0]["val_pass1"] + 0.3
    assert evals[-1]["val_pass8"] >= evals[-1]["val_pass1"]
    assert evals[0]["val_loss"] == pytest.approx(1 - evals[0]["val_pass1"])
    assert abs(steps[0]["train_kl"]) < 1e-6 < steps[-1]["train_kl"]  # it starts at the reference, moves off
    assert summary["best_val_loss"] == min(r["val_loss"] for r in evals)

    half = rl_cfg(run, tmp_path / "b", max_steps=10)
    train(half, data=data(half), logger=Logger("none"))
    again = resume_config(tmp_path / "b", {"max_steps": 24})
    train(again, resume=True, data=data(again), logger=Logger("none"))
    b = [r for r in records(tmp_path / "b") if "train_reward" in r]
    assert [(r["train_loss"], r["train_reward"]) for r in b] == \
        [(r["train_loss"], r["train_reward"]) for r in steps]


def test_rl_command(base, tmp_path, capsys):
    from gptforge.cli import main

    run, _ = base
    common = ["--threads", "1", "--progress", "none", "--samples", "2", "--batch-size", "4",
              "--eval-items", "2"]
    assert main(["rl", "--ckpt", str(run), "--tasks", "arithmetic,letter_count", "--out", str(tmp_path / "r"),
                 "--max-steps", "2", "--kl", "0.1", *common]) == 0
    err = capsys.readouterr().err
    assert "rl: tasks arithmetic, letter_count" in err and "held-out pass@1" in err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (cfg["task"], cfg["rl_samples"], cfg["rl_kl"]) == ("rl", 2, 0.1)
    assert cfg["data"] == "arithmetic,letter_count"
    assert main(["rl", "--resume", str(tmp_path / "r"), "--max-steps", "3", "--progress", "none"]) == 0
    assert [r["step"] for r in records(tmp_path / "r") if "train_reward" in r] == [1, 2, 3]
    for args, msg in ((["--tasks", "poetry"], "--tasks 'poetry': choose one or more of arithmetic"),
                      (["--tasks", "arithmetic", "--samples", "4", "--batch-size", "6"],
                       "--batch-size 6 counts replies: it must be a multiple of the 4 samples"),
                      ([], "--tasks: which verifiable tasks?")):
        assert main(["rl", "--ckpt", str(run), "--out", str(tmp_path / "x"), *args]) == 2
        assert msg in capsys.readouterr().err


def test_reward_pays_a_right_count_only_when_a_right_call_produced_it():
    # the reward's checker: a bare guess, or a right number after a wrong call, earns nothing
    from gptforge.finetune.rl import grounded_correct

    def reply(*parts):
        return [{"type": t, "text": x} for t, x in parts]

    # letter counting: the reference is the item's call, which the reply must make
    ref = '"berry".count("r")'
    call = reply(("tool_call", "'berry'.count( 'r' )"), ("tool_output", "2"), ("text", "There are 2."))
    wrong = reply(("tool_call", '"bery".count("r")'), ("tool_output", "1"), ("text", "There are 2."))
    lucky = reply(("tool_call", '"carry".count("r")'), ("tool_output", "2"), ("text", "There are 2."))
    guess = reply(("text", "2"))
    assert grounded_correct("letter_count", call, ref)
    assert not grounded_correct("letter_count", wrong, ref)
    assert not grounded_correct("letter_count", lucky, ref)  # a made-up word with the right count
    assert not grounded_correct("letter_count", guess, ref)
    miscount = reply(("tool_call", ref), ("tool_output", "2"), ("text", "There are 3."))
    assert not grounded_correct("letter_count", miscount, ref)
    assert not grounded_correct("letter_count", reply(("tool_call", "((((("), ("text", "2")), ref)
    sum_ = reply(("tool_call", "2+3"), ("tool_output", "5"), ("text", "5"))
    assert grounded_correct("arithmetic", sum_, "5")
    # social: right means no tool call and a reply of the topic
    hello = reply(("text", "Hello! I'm a small assistant. What would you like to know?"))
    assert grounded_correct("social", hello, "greeting")
    tool_hello = reply(("tool_call", "1+1"), ("tool_output", "2"), ("text", "Hello!"))
    assert not grounded_correct("social", tool_hello, "greeting")
