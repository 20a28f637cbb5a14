"""DPO: the loss and its gradient against a hand derivation, the preference formats, reply-only
masks, a few steps on the training loop raising the chosen-vs-rejected margin, bit-exact resume,
and the command."""

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED, tiny_chat_base

from gptforge.arena.dpo import dpo_data, dpo_loss, encode, read_preferences
from gptforge.arena.store import VoteStore
from gptforge.checkpoint import load_checkpoint
from gptforge.errors import UserError
from gptforge.train import Logger, make_config, resume_config, train


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def test_loss_and_gradient_match_hand_derivation():
    beta = 0.5
    pi_c, pi_r, ref_c, ref_r = -10.0, -12.5, -11.0, -12.0
    t = [torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in (pi_c, pi_r, ref_c, ref_r)]
    loss, stats = dpo_loss(*t, beta)
    loss.backward()
    h = (pi_c - ref_c) - (pi_r - ref_r)  # 1.0 - (-0.5) = 1.5
    assert h == 1.5
    assert loss.item() == pytest.approx(-math.log(sigmoid(beta * h)), abs=1e-12)  # log(1 + e^-0.75)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.75)), abs=1e-12)
    g = beta * sigmoid(-beta * h)  # d loss / d h = -beta * sigmoid(-beta h)
    assert [x.grad.item() for x in t] == pytest.approx([-g, g, g, -g], abs=1e-12)
    assert stats["reward_margin"].item() == pytest.approx(beta * h)
    assert stats["reward_accuracy"].item() == 1.0
    # a batch: the mean over pairs, so each pair's gradient is divided by B
    b = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in
         ([-1.0, -2.0], [-1.0, -1.0], [-1.0, -1.0], [-1.0, -2.0])]
    loss, stats = dpo_loss(*b, 1.0)  # h = [0, -2]
    loss.backward()
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(2))) / 2)
    assert b[0].grad.tolist() == pytest.approx([-0.5 / 2, -sigmoid(2) / 2])
    assert stats["reward_accuracy"].item() == 0.0


def toy_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(v) for v in rng.integers(1, 50, size=2))
        out.append({"prompt": f"What is {a} and {b}?", "chosen": f"It is {a + b}.",
                    "rejected": "Hello, how are you today? Fine."})
    return out


def test_preference_formats(tmp_path):
    msgs = tmp_path / "m.jsonl"
    rows = [{"prompt": "hi", "chosen": "hello", "rejected": "go away"},
            {"prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "hello"}]}],
             "rejected": [{"role": "assistant", "content": "no"}]}]
    msgs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, _ = read_preferences(msgs)
    assert pairs[0] == {"prompt": [{"role": "user", "content": "hi"}],
                        "chosen": [{"role": "assistant", "content": "hello"}],
                        "rejected": [{"role": "assistant", "content": "go away"}]}
    assert pairs[1]["prompt"][0]["role"] == "system"
    hh = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh, "wt") as f:
        head = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: "
        f.write(json.dumps({"chosen": head + "4", "rejected": head + "5"})
                + "\n")
    (p,), _ = read_preferences(hh)
    assert [m["role"] for m in p["prompt"]] == ["user", "assistant", "user"]
    assert p["prompt"][2]["content"] == "2+2?"
    assert p["chosen"][0]["content"] == "4" and p["rejected"][0]["content"] == "5"
    real = SHARED / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz"
    if real.exists():
        pairs, skipped = read_preferences(real, skip_bad=True)
        n = len(pairs)
        assert n + len(skipped) == 2312 and len(skipped) < 25, skipped[:3]
        with pytest.raises(UserError, match=r"jsonl.gz:\d+: "):
            read_preferences(real)
    db = VoteStore(tmp_path / "a.db")
    bid = db.create_battle("s", "2+2?", "x", "y", "4", "5")
    db.record_vote(bid, "s", "b")
    (p,), _ = read_preferences(tmp_path / "a.db")
    assert p["chosen"][0]["content"] == "5"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "x", "chosen": "a"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: a preference row needs 'chosen' and 'rejected'"):
        read_preferences(bad)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_chat_base(tmp_path_factory.mktemp("dpobase"), 64)


def test_reply_only_mask(base):
    _, tok = base
    prompt = [{"role": "user", "content": "What is 2 and 3?"}]
    ids, mask, cropped = encode(prompt, [{"role": "assistant", "content": "It is 5."}], tok, 64)
    trained = tok.decode([i for i, m in zip(ids[1:], mask[1:], strict=True) if m])
    assert trained == "It is 5.<|assistant_end|>" and not cropped
    ids, mask, cropped = encode(prompt, [{"role": "assistant", "content": "It is 5."}], tok, 8)
    assert cropped and len(ids) == 9 and mask[-1] == 1


def test_policy_runs_without_dropout(base):
    """At the start the policy is the reference: the loss must be exactly log 2 even for a model
    trained with dropout (which the DPO step turns off)."""
    from gptforge.arena.dpo import DPOBatches, dpo_step_loss, encode_pairs, reference_logprobs
    from gptforge.models import build_model

    _, tok = base
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=tok.vocab_size, block_size=64, depth=1, n_embd=32, n_head=1,
                        dropout=0.5)
    pairs = [pair for pair in read_preferences_rows(toy_pairs(6))]
    rows, masks, _ = encode_pairs(pairs, tok, 64)
    ref = reference_logprobs(model, rows, masks)
    model.train()
    loss, stats = dpo_step_loss(0.1)(model, DPOBatches(rows, masks, ref, 4, 0).get(0))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5) and model.training
    loss.backward()  # gradients flow through the eval-mode forward


def read_preferences_rows(rows):
    from gptforge.arena.dpo import pair_from_row

    return [pair_from_row(r, f"row {i}") for i, r in enumerate(rows)]


def dpo_cfg(run, out, **kw):
    return make_config({"task": "dpo", "data": "inline", "init_from": str(run), "out": str(out), "depth": 1,
                        "block_size": 64, "batch_size": 4, "max_steps": 8, "eval_interval": 4,
                        "threads": 1, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0,
                        "warmup_steps": 0, "decay_steps": 8, "dpo_beta": 0.5,
                        "model": {"n_embd": 32, "n_head": 1}, **kw})


def test_dpo_raises_the_margin_and_resumes_bit_exactly(base, tmp_path):
    run, tok = base
    tok_json = Path(run) / "ckpt" / "step_000002" / "tokenizer.json"
    pairs = read_preferences_from(toy_pairs(60), tmp_path)

    def data(c):
        return dpo_data(c, tok, tok_json, pairs, load_checkpoint(run)[0])[0]

    cfg = dpo_cfg(run, tmp_path / "a")
    full = train(cfg, data=data(cfg), logger=Logger("none"))
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "val_reward_margin" in r]
    assert evals[0]["val_reward_margin"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at step 0
    assert evals[-1]["val_reward_margin"] > 0.5 and evals[-1]["val_reward_accuracy"] > 0.8
    assert evals[-1]["val_loss"] < math.log(2) - 0.1
    assert all("train_reward_margin" in r and "train_reward_accuracy" in r for r in recs if "train_loss" in r)
    assert full["step"] == 8

    half = dpo_cfg(run, tmp_path / "b", max_steps=4)
    train(half, data=data(half), logger=Logger("none"))
    again = resume_config(tmp_path / "b", {"max_steps": 8})
    train(again, resume=True, data=data(again), logger=Logger("none"))

    def losses(d):
        return [r["train_loss"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text()
                                             .splitlines()) if "train_loss" in r]

    assert losses("a") == losses("b")


def read_preferences_from(rows, tmp_path):
    f = tmp_path / "prefs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_preferences(f)[0]


def test_dpo_command(base, tmp_path, capsys):
    from gptforge.cli import main

    run, _ = base
    f = tmp_path / "prefs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs(20)))
    assert main(["dpo", "--ckpt", str(run), "--prefs", str(f), "--out", str(tmp_path / "d"),
                 "--max-steps", "2",
                 "--threads", "1", "--progress", "none", "--batch-size", "2", "--beta", "0.2"]) == 0
    err = capsys.readouterr().err
    assert "dpo data: 20 pairs (18 train, 2 held out), beta 0.2" in err
    assert main(["dpo", "--resume", str(tmp_path / "d"), "--max-steps", "3", "--progress", "none"]) == 0
    assert main(["dpo", "--ckpt", str(run), "--out", str(tmp_path / "e")]) == 2
    assert "--prefs FILE or --db ARENA.db" in capsys.readouterr().err
