"""`gptforge doctor`: each classic mistake, planted in a tiny real setup, is caught (FAIL or WARN),
and the clean setup passes every check, through the library and the command line."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import CHAT_TEXT

from gptforge.chat.render import render
from gptforge.chat.sft import SFTBatches, pack
from gptforge.cli import main
from gptforge.explore import doctor as dr
from gptforge.models import build_model
from gptforge.tokenizer import BPETokenizer, CharTokenizer
from gptforge.train import make_config
from gptforge.train.batches import PretrainBatches
from gptforge.train.optim import build_optimizers

WORDS = ("time love king night lord heart death life hand eyes world father blood heaven honour day "
         "sweet fair true good great poor old young dear noble gentle speak come go make know").split()
T = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Shards of a text that never repeats itself (random words), a BPE with the chat tokens."""
    from gptforge.data.shards import open_shards, prepare

    torch.set_num_threads(1)  # tiny models: more threads only contend on a shared machine
    d = tmp_path_factory.mktemp("doctor")
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=8)) for _ in range(3000)]
    text = "\n".join(lines) + "\n"
    tok = BPETokenizer.train(CHAT_TEXT + text[:20000], vocab_size=320)
    (d / "c.txt").write_text(text)
    prepare(str(d / "c.txt"), tok, d / "data", workers=1, progress=False)
    sh = open_shards(d / "data")
    return d, tok, sh.tokens("train"), sh.tokens("val")


def tiny(vocab: int, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("gpt", vocab_size=vocab, block_size=T, preset="modern", depth=1,
                       **{"n_embd": 32, "n_head": 2, **kw}).train()


def batch_of(tokens, rows=4):
    return PretrainBatches(tokens, rows, T, seed=1).get(0)


class SoftmaxGPT(torch.nn.Module):
    """Planted: the forward applies softmax, and the loss is taken on the probabilities."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, x, y=None):
        probs = F.softmax(self.inner(x)[0], dim=-1)
        loss = None if y is None else F.cross_entropy(probs.flatten(0, 1), y.flatten(), ignore_index=-1)
        return probs, loss


class SoftmaxInLoss(SoftmaxGPT):
    """Planted: returns logits, but the loss sees softmax(logits)."""

    def forward(self, x, y=None):
        logits = self.inner(x)[0]
        loss = None if y is None else F.cross_entropy(F.softmax(logits, -1).flatten(0, 1), y.flatten())
        return logits, loss


class AlwaysDropout(torch.nn.Module):
    """Planted: F.dropout with its default training=True, whatever mode the model is in."""

    def forward(self, x):
        return F.dropout(x, 0.2)


class Stuck:
    """Planted: a loader that hands out its first batch forever."""

    def __init__(self, inner):
        self.inner = inner

    def get(self, index, device="cpu"):
        return self.inner.get(0, device)


class Unshifted(Stuck):
    """Planted: a corrupted batch, targets equal to the inputs."""

    def get(self, index, device="cpu"):
        x, _ = self.inner.get(index, device)
        return x, x.clone()


class Lowercasing:
    """Planted: a tokenizer that lowercases on the way in (no round trip)."""

    def __init__(self, tok):
        self.tok = tok

    def encode_ordinary(self, text):
        return self.tok.encode_ordinary(text.lower())

    def decode(self, ids):
        return self.tok.decode(ids)


def no_zero_grad_step(model, optimizers, batch, loss_fn):
    """Planted: the optimizer step without zero_grad."""
    loss_fn(model, batch)[0].backward()
    for opt in optimizers:
        opt.step()


def test_initial_loss_and_logits(setup):
    _, tok, train, _ = setup
    b = batch_of(train)
    m = tiny(tok.vocab_size)
    assert dr.check_initial_loss(m, b, tok.vocab_size).status == "PASS"
    assert dr.check_logits(m, b).status == "PASS"
    loud = tiny(tok.vocab_size)
    with torch.no_grad():
        loud.lm_head.weight.mul_(3000.0)  # confidently wrong at init
    assert dr.check_initial_loss(loud, b, tok.vocab_size).status == "FAIL"
    for planted in (SoftmaxGPT(m), SoftmaxInLoss(m)):
        c = dr.check_logits(planted, b)
        assert c.status == "FAIL", c


def test_overfit_one_batch(setup):
    _, tok, train, _ = setup
    b = batch_of(train, rows=2)
    m = tiny(tok.vocab_size)
    c = dr.check_overfit_one_batch(m, b, steps=60)
    assert c.status == "PASS", c
    c = dr.check_overfit_one_batch(SoftmaxGPT(tiny(tok.vocab_size)), b, steps=60)
    assert c.status == "FAIL", c  # probabilities in [0, 1] as logits cannot get the loss far below ln V


def test_train_eval_mode(setup):
    _, tok, train, _ = setup
    b = batch_of(train)
    assert dr.check_train_eval_mode(tiny(tok.vocab_size), b).status == "PASS"  # no dropout
    assert dr.check_train_eval_mode(tiny(tok.vocab_size, dropout=0.1), b).status == "PASS"
    planted = tiny(tok.vocab_size, dropout=0.1)
    planted.transformer.drop = AlwaysDropout()
    c = dr.check_train_eval_mode(planted, b)
    assert c.status == "FAIL" and "eval" in c.reason


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_zero_grad(setup, optimizer):
    _, tok, train, _ = setup
    b = batch_of(train)
    cfg = make_config({"optimizer": optimizer})
    m = tiny(tok.vocab_size, dropout=0.1)  # same seed each step -> same dropout masks
    opts = lambda model: build_optimizers(model, cfg, "cpu")
    assert dr.check_zero_grad(m, opts, b).status == "PASS"
    c = dr.check_zero_grad(m, opts, b, step_fn=no_zero_grad_step)
    assert c.status == "FAIL" and "x2.00" in c.reason


def test_batches(setup):
    _, _, train, _ = setup
    good = PretrainBatches(train, 4, T, seed=1)
    assert dr.check_batches_vary(good, accum=2).status == "PASS"
    assert dr.check_batches_vary(Stuck(good)).status == "FAIL"
    assert dr.check_targets_shifted(good).status == "PASS"
    assert dr.check_targets_shifted(Unshifted(good)).status == "FAIL"


def test_split_overlap(setup):
    _, tok, train, val = setup
    assert dr.check_split_overlap(train, val, tok.eot_id).status == "PASS"
    c = dr.check_split_overlap(train, np.array(train[:5000]), tok.eot_id)
    assert c.status == "FAIL" and "100.0%" in c.reason
    leaky = np.concatenate([np.asarray(val), np.asarray(train[1000:1300])])  # 300 train tokens pasted in
    assert dr.check_split_overlap(train, leaky, tok.eot_id).status == "WARN"
    # whole documents shared: val = two train documents
    docs = np.asarray([5, 6, 7, 8, 9, 10, 11, 12, 13, 0, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29], np.uint16)
    tr = np.concatenate([np.arange(100, 400, dtype=np.uint16), [0], docs])
    c = dr.check_split_overlap(tr, docs, sep=0, n=4)
    assert c.status == "FAIL" and "2 of 2 val documents" in c.reason


def test_hyperparameters():
    ok = make_config({"lr": 1e-3, "batch_size": 16, "block_size": 256, "max_steps": 1000})
    assert dr.check_hyperparameters(ok, 10_000_000, 50_000_000).status == "PASS"
    hot = make_config({"lr": 1.0, "batch_size": 1, "block_size": 64, "max_steps": 10, "warmup_steps": 20})
    c = dr.check_hyperparameters(hot, 10_000_000, 50_000_000)
    assert c.status == "WARN" and "lr 1 is high" in c.reason and "noisy" in c.reason and "warmup" in c.reason


def test_tokenizer_roundtrip(setup):
    _, tok, _, _ = setup
    texts = ["First Citizen:\nBefore we proceed any further, hear me speak.", "Ünïcödé ✓ 日本"]
    assert dr.check_tokenizer_roundtrip(tok, texts).status == "PASS"
    c = dr.check_tokenizer_roundtrip(Lowercasing(tok), texts)
    assert c.status == "FAIL" and "character 0" in c.reason


def convs(n):
    return [[{"role": "user", "content": f"What is {i} and {i}?"},
             {"role": "assistant", "content": f"It is {2 * i}."}] for i in range(n)]


def test_chat_tokens(setup):
    _, tok, _, _ = setup
    rows, masks, _ = pack(convs(40), tok, T)
    good = SFTBatches(rows, masks, 4, seed=0)
    assert dr.check_chat_tokens(tok, [good.get(s) for s in range(3)]).status == "PASS"
    # planted: the conversations written out as text with the markers, encoded as ordinary text
    plain = []
    for c in convs(40):
        ids, _ = render(c, tok)
        plain.append(tok.encode_ordinary(tok.decode(ids))[:T + 1])
    plain = np.array([p + [0] * (T + 1 - len(p)) for p in plain], dtype=np.int32)
    bad = SFTBatches(plain, np.ones_like(plain, dtype=np.uint8), 4, seed=0)
    c = dr.check_chat_tokens(tok, [bad.get(s) for s in range(3)])
    assert c.status == "FAIL" and "plain text" in c.reason
    char = CharTokenizer.train("abc")
    assert dr.check_chat_tokens(char, [good.get(0)]).status == "FAIL"


TINY = {"depth": 1, "block_size": T, "batch_size": 8, "tokens_per_step": 2048, "threads": 1, "lr": 1e-2,
        "max_steps": 100, "warmup_steps": 5, "model": {"n_embd": 32, "n_head": 2}}


def test_run_doctor_clean_setup_passes(setup, capsys):
    d, _, _, _ = setup
    checks = dr.run_doctor(make_config({**TINY, "data": str(d / "data")}))
    assert [c for c in checks if c.status not in ("PASS", "SKIP")] == []
    assert len(checks) == 11
    toml = Path(d / "c.toml")
    toml.write_text(f'data = "{d / "data"}"\ndepth = 1\nblock_size = {T}\nbatch_size = 8\n'
                    'tokens_per_step = 2048\nthreads = 1\nlr = 0.01\nwarmup_steps = 5\nmax_steps = 100\n'
                    '[model]\nn_embd = 32\nn_head = 2\n')
    assert main(["doctor", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "PASS  overfit one batch" in out and "FAIL" not in out
    # a flag on top of the file: a learning rate far too high is a WARN, not a failure
    assert main(["doctor", "--config", str(toml), "--lr", "5"]) == 0
    assert "WARN  lr and batch size" in capsys.readouterr().out


@pytest.mark.parametrize("broken", ["zero_grad", "step"])
def test_run_doctor_fails_when_the_training_step_is_broken(setup, monkeypatch, broken):
    """Doctor takes the training loop's own optimizer step: planted in it, a lost zero_grad or
    optimizer.step() fails the checklist."""
    from gptforge.train import step

    real = step.optimizer_step

    def broken_step(model, optimizers, *args, **kw):
        for opt in optimizers:  # the instance's method shadowed by one that does nothing
            setattr(opt, broken, lambda *a, **k: None)
        return real(model, optimizers, *args, **kw)

    monkeypatch.setattr(step, "optimizer_step", broken_step)
    d, _, _, _ = setup
    checks = dr.run_doctor(make_config({**TINY, "data": str(d / "data")}))
    failed = {c.name for c in checks if c.status == "FAIL"}
    assert "zero_grad between steps" in failed
    if broken == "step":
        assert "overfit one batch" in failed
