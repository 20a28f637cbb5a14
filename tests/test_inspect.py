"""`gptforge inspect batch`: the batch recomputed from a run's config is byte for byte the one the
trainer fed at that step (pretraining with gradient accumulation, and SFT with its loss mask)."""

import dataclasses
import json

import pytest
import torch
from helpers import tiny_chat_base

from gptforge.chat.sft import sft_data
from gptforge.chat.sources import conversations
from gptforge.cli import main
from gptforge.explore.batch import batch_at, decode_batch, render_html, render_terminal
from gptforge.explore.setup import run_config
from gptforge.train import Logger, make_config, train
from gptforge.train.session import shard_data

T = 32


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_chat_base(tmp_path_factory.mktemp("inspect"), T)


def recording(data):
    """The same TrainData, its loss function noting every batch the loop hands it."""
    fed = []

    def loss_fn(model, batch):
        fed.append(tuple(t.clone() for t in batch))
        return data.loss_fn(model, batch)

    return dataclasses.replace(data, loss_fn=loss_fn), fed


def test_pretrain_batch_is_byte_identical(base, tmp_path):
    run, tok = base
    cfg = make_config({"data": str(run.parent / "data"), "out": str(tmp_path / "run"), "depth": 1,
                       "block_size": T, "batch_size": 4, "tokens_per_step": 2 * 4 * T, "max_steps": 3,
                       "eval_tokens": T, "threads": 1, "model": {"n_embd": 32, "n_head": 1}})
    data, fed = recording(shard_data(cfg))
    train(cfg, data=data, logger=Logger("none"))
    assert len(fed) == 6  # 3 steps x 2 micro steps
    again = run_config(tmp_path / "run")
    for step in range(3):
        for micro in range(2):
            x, y, tok2 = batch_at(again, step, micro)
            fx, fy = fed[step * 2 + micro]
            assert torch.equal(x, fx) and torch.equal(y, fy)
            rows = decode_batch(tok2, x, y)
            for r, row in enumerate(rows):
                assert row.input_bytes == tok.decode_bytes(fx[r].tolist())
                assert b"".join(row.pieces) == tok.decode_bytes(fx[r].tolist() + [int(fy[r, -1])])
                assert all(row.trained[1:]) and not row.trained[0]
    text = render_terminal(decode_batch(tok, *fed[4]))
    assert tok.decode(fed[4][0][0].tolist()) in text and "⟦" not in text  # every target trained: no marks


def test_sft_batch_with_mask(base, tmp_path, capsys):
    run, tok = base
    convs = [{"messages": [{"role": "user", "content": f"{i} <b>&"},
                           {"role": "assistant", "content": f"Yes {i}"}]} for i in range(60)]
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps(c) + "\n" for c in convs))
    cfg = make_config({"task": "sft", "data": str(f), "init_from": str(run), "out": str(tmp_path / "sft"),
                       "depth": 1, "block_size": T, "batch_size": 4, "max_steps": 3, "eval_tokens": 0,
                       "threads": 1, "model": {"n_embd": 32, "n_head": 1}})
    tok_json = next((run / "ckpt").glob("step_*")) / "tokenizer.json"
    data, _, _ = sft_data(cfg, tok, tok_json, conversations(str(f), "train"), conversations(str(f), "test"))
    data, fed = recording(data)
    train(cfg, data=data, logger=Logger("none"))
    x, y, _ = batch_at(run_config(tmp_path / "sft"), 2)
    assert torch.equal(x, fed[2][0]) and torch.equal(y, fed[2][1])
    rows = decode_batch(tok, x, y)
    for r, row in enumerate(rows):
        assert row.input_bytes == tok.decode_bytes(x[r].tolist())
        # the mask: a token is marked trained iff the target before it is scored
        assert row.trained[1:len(y[r]) + 1] == (y[r] != -1).tolist()[:len(row.ids) - 1]
        trained_text = b"".join(p for p, t in zip(row.pieces, row.trained, strict=True) if t)
        assert b"Yes" in trained_text and b"<b>" not in trained_text  # answers trained, questions not
    text = render_terminal(rows)
    assert "⟦Yes" in text and "<|assistant_end|>⟧" in text
    page = render_html(rows, "sft")
    assert "&lt;" in page and "&amp;" in page and "<b>" not in page  # escaped, token by token

    out = tmp_path / "b.html"
    assert main(["inspect", "batch", "--run", str(tmp_path / "sft"), "--step", "2", "--html", str(out)]) == 0
    printed = capsys.readouterr()
    assert text in printed.out and "targets trained (sft)" in printed.err
    assert out.read_text(encoding="utf-8") == render_html(rows, "sft batch: step 2, micro 0, rank 0")
    assert main(["inspect", "batch", "--run", str(tmp_path / "sft"), "--step", "0", "--micro", "1"]) == 2
