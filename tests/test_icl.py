"""`gptforge probe icl`: a GPT trained for a few seconds to copy repeated random spans gets a large
induction score, the same GPT untrained and a bigram model about zero; every checkpoint of a run is
scored, and the table, JSON and plot are written."""

import json

import pytest
import torch
from helpers import randomize

from gptforge.checkpoint import RunState, save_checkpoint
from gptforge.cli import main
from gptforge.lab import icl
from gptforge.models import build_model, model_config
from gptforge.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
L = 12  # span length the copier trains on


def _save(run, model, tok, step):
    state = RunState(step=step, tokens=step * 32 * 2 * L, model_config=model_config(model),
                     tokenizer=tok.identity())
    save_checkpoint(run, model, [], state, tokenizer_json=tok.save(run.parent / "tok.json"), keep_last=10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run holding the copier at step 0 (initialised) and step 150 (trained on [eot, span, span]
    of random ordinary tokens), and a run holding a random bigram model."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("icl")
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyzABCDEF")  # 32 ordinary ids, <|endoftext|> = 32
    gpt = build_model("gpt", vocab_size=tok.vocab_size, block_size=2 * L + 8, preset="modern", depth=2,
                      n_embd=64, n_head=2)
    _save(d / "gpt", gpt, tok, 0)
    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    for _ in range(150):
        x = torch.randint(0, 32, (32, L))
        seq = torch.cat([torch.full((32, 1), tok.eot_id), x, x], 1)
        _, loss = gpt(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    _save(d / "gpt", gpt.eval(), tok, 150)
    bigram = randomize(build_model("bigram", vocab_size=tok.vocab_size, block_size=64))
    _save(d / "bigram", bigram, tok, 7)
    return d


def test_copier_scores_high_untrained_and_bigram_about_zero(runs):
    rows = icl.probe([str(runs / "gpt"), str(runs / "bigram")], n=64, length=L)
    assert [(r.run.split("/")[-1], r.step) for r in rows] == [("gpt", 0), ("gpt", 150), ("bigram", 7)]
    untrained, copier, bigram = rows
    # random ids out of 32: nothing but the first copy predicts the second
    assert copier.first > 3.0 and copier.second < 1.0 and copier.score > 2.5
    assert abs(untrained.score) < 0.05
    # a bigram predicts a token from the one before it alone: the same inputs twice give the same loss
    assert bigram.first > 3.0 and abs(bigram.score) < 1e-5


def test_copy_losses_by_hand():
    """An oracle that puts all its probability on the token that followed the current one the last
    time it appeared (uniform when it has not appeared) loses ln 32 on the first copy, 0 on the second."""
    V = 32

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx):
            B, T = idx.shape
            logits = torch.zeros(B, T, V)
            for b in range(B):
                for t in range(T):
                    prev = [s for s in range(t) if idx[b, s] == idx[b, t]]
                    if prev:
                        logits[b, t, idx[b, prev[-1] + 1]] = 100.0
            return logits, None

    spans = torch.stack([torch.randperm(V)[:10] for _ in range(4)])  # no repeats inside a span
    first, second = icl.copy_losses(Oracle(), spans)
    assert first == pytest.approx(torch.log(torch.tensor(float(V))).item(), abs=1e-4)
    assert second == pytest.approx(0.0, abs=1e-4)


def test_random_spans_leave_out_special_ids():
    s = icl.random_spans(10, {3, 7}, n=50, length=20, seed=0)
    assert s.shape == (50, 20) and s.dtype == torch.int64
    assert set(s.unique().tolist()) == {0, 1, 2, 4, 5, 6, 8, 9}
    assert torch.equal(s, icl.random_spans(10, {3, 7}, n=50, length=20, seed=0))


def test_cli_writes_table_json_and_plot(runs, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", "icl", "--ckpt", str(runs / "gpt"), str(runs / "bigram" / "ckpt" / "step_000007"),
                 "--length", str(L), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "induction score" in printed and printed.count("\n| ") == 3  # 3 rows
    rows = json.loads((out / "icl.json").read_text())
    assert [r["step"] for r in rows] == [0, 150, 7] and rows[1]["score"] > 2.5
    assert (out / "icl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "icl.md").read_text()
    assert f"| {runs / 'gpt'} | 150 |" in md and f"| {runs / 'gpt'} | 0 |" in md


def test_missing_run_is_one_line(tmp_path, capsys):
    assert main(["probe", "icl", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
