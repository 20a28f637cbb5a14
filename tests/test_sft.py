"""SFT: whole conversations packed into rows, masked targets, the pretraining loop reused (loss goes
down, resume is bit-exact), and the command's errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CHAT_TEXT as TEXT
from helpers import tiny_chat_base

from gptforge.chat.render import render
from gptforge.chat.sft import pack, sft_data
from gptforge.errors import UserError
from gptforge.tokenizer import BPETokenizer
from gptforge.train import Logger, make_config, resume_config, train


def convs(n: int, seed: int = 0) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.integers(1, 50, size=2)
        out.append([{"role": "user", "content": f"What is {a} and {b}?"},
                    {"role": "assistant", "content": [{"type": "tool_call", "text": f"{a}+{b}"},
                                                      {"type": "tool_output", "text": str(a + b)},
                                                      {"type": "text", "text": f"It is {a + b}."}]}])
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, BPETokenizer]:
    """A tiny pretrained GPT with a BPE tokenizer that has the chat tokens."""
    return tiny_chat_base(tmp_path_factory.mktemp("base"), 64)


def test_packing_keeps_conversations_whole_and_counts_crops():
    tok = BPETokenizer.train(TEXT, vocab_size=320)
    cs = convs(30)
    lens = [len(render(c, tok)[0]) for c in cs]
    T = max(lens) * 3
    rows, masks, st = pack(cs, tok, T)
    assert rows.shape == masks.shape == (st.rows, T + 1) and st.cropped == 0 and st.conversations == 30
    flat = [r.tolist() for r in rows]
    # every conversation appears whole, in order, inside one row
    k = 0
    for row in flat:
        pos = 0
        while k < len(cs):
            ids, _ = render(cs[k], tok)
            if row[pos:pos + len(ids)] != ids:
                break
            pos += len(ids)
            k += 1
        assert set(row[pos:]) <= {tok.eot_id}  # the rest is padding
    assert k == 30
    assert masks.sum() == st.trained_tokens == sum(sum(render(c, tok)[1]) for c in cs)
    _, _, st2 = pack(cs, tok, min(lens) - 2)
    assert st2.cropped == 30  # too long for a row: cropped and counted, never dropped silently


def test_sft_learns_and_resumes_bit_exactly(base, tmp_path):
    run, tok = base
    cfg = make_config({"task": "sft", "data": "inline", "init_from": str(run), "out": str(tmp_path / "a"),
                       "depth": 1, "block_size": 64, "batch_size": 4, "max_steps": 12, "eval_interval": 6,
                       "eval_tokens": 0, "threads": 1, "lr": 3e-3, "warmup_steps": 2, "decay_steps": 12,
                       "model": {"n_embd": 32, "n_head": 1}})
    tok_json = Path(run) / "ckpt" / "step_000002" / "tokenizer.json"

    def data(c):
        return sft_data(c, tok, tok_json, convs(200), convs(20, seed=1))[0]

    full = train(cfg, data=data(cfg), logger=Logger("none"))
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in recs if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.5  # it learned the format

    half = make_config({**cfg.to_dict(), "out": str(tmp_path / "b"), "max_steps": 5})
    train(half, data=data(half), logger=Logger("none"))
    again = resume_config(tmp_path / "b", {"max_steps": 12})
    train(again, resume=True, data=data(again), logger=Logger("none"))

    def losses(d):
        return [r.get("train_loss") for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text()
                                                  .splitlines()) if "train_loss" in r]

    assert losses("a") == losses("b") and full["step"] == 12


def test_sft_starts_fresh_budgets_and_its_own_batches(base, tmp_path):
    """A base trained by a timed speedrun stage with curriculum sampling and weight decay: its SFT
    neither re-plans to the base's schedule time nor claims curriculum batches nor decays weights,
    unless told to."""
    import shutil

    from gptforge.chat.sft import sft_config

    run = tmp_path / "base"
    shutil.copytree(base[0], run)
    for tj in run.glob("ckpt/*/trainer.json"):
        st = json.loads(tj.read_text())
        st["config"].update(schedule="wsd", schedule_time=230.0, max_time=240.0, sampling="curriculum",
                            weight_decay=0.3)
        tj.write_text(json.dumps(st))
    cfg = sft_config(run, {"out": str(tmp_path / "sft")})
    assert (cfg.schedule_time, cfg.max_time, cfg.sampling, cfg.max_steps) == (0.0, 0.0, "random", 300)
    assert cfg.weight_decay == 0.0
    assert sft_config(run, {"out": str(tmp_path / "sft"), "weight_decay": 0.05}).weight_decay == 0.05


def test_sft_help_shows_the_defaults_an_sft_run_gets(base, tmp_path):
    """Each flag's "(default: ...)" in `gptforge sft --help` is what sft_config gives when the flag is
    left out: SFT's own reset, or the base run's value (here set away from gptforge's defaults)."""
    import re
    import shutil

    from gptforge.chat.sft import sft_config
    from gptforge.cli import build_parser

    run = tmp_path / "base"
    shutil.copytree(base[0], run)
    for tj in run.glob("ckpt/*/trainer.json"):
        st = json.loads(tj.read_text())
        st["config"].update(weight_decay=0.3, lr=0.0042, warmup_steps=7, max_steps=999, seed=5)
        tj.write_text(json.dumps(st))
        base_cfg = st["config"]
    sub = next(a for a in build_parser("sft")._actions if a.dest == "command").choices["sft"]
    cfg = sft_config(run, {"out": ""}).to_dict()
    shown = {a.dest: re.search(r"\(default: (.*)\)$", " ".join(a.help.split())).group(1)
             for a in sub._actions if a.dest in cfg}
    assert shown["weight_decay"] == "0.0" and shown["lr"] == "the base run's"  # the bug: it said 0.1
    assert len(shown) > 30
    for name, text in shown.items():
        if text == "the base run's":
            assert cfg[name] == base_cfg[name], name
        elif name not in ("out", "data"):  # the run names these; an empty --data is refused
            assert repr(cfg[name]) == text, name


def test_sft_refuses_tokenizers_and_models_that_cannot_chat(base, tmp_path, capsys):
    from gptforge.cli import main
    from gptforge.data.shards import prepare
    from gptforge.tokenizer import CharTokenizer

    tok = CharTokenizer.train(TEXT)
    prepare_dir = tmp_path / "cdata"
    (tmp_path / "c.txt").write_text(TEXT)
    prepare(str(tmp_path / "c.txt"), tok, prepare_dir, workers=1, progress=False)
    train(make_config({"data": str(prepare_dir), "out": str(tmp_path / "bigram"), "arch": "bigram",
                       "block_size": 16, "max_steps": 1, "eval_tokens": 16, "threads": 1}),
          logger=Logger("none"))
    assert main(["sft", "--ckpt", str(tmp_path / "bigram"), "--data", "identity"]) == 2
    assert "SFT finetunes GPT models; this one is 'bigram'" in capsys.readouterr().err
    with pytest.raises(UserError, match="char tokenizer has no chat tokens"):
        pack(convs(1), tok, 64)


def test_pretrain_mix_puts_windows_of_the_base_runs_own_shards_in_the_batches(base, tmp_path):
    """--pretrain-mix: about that share of rows are windows of the base run's train split, trained on
    in full (no masked target); 0 gives the conversation rows alone; a base whose shards are gone
    is one clear error."""
    import shutil

    from gptforge.chat.sft import SFTBatches, sft_config
    from gptforge.data.shards import open_shards

    run, tok = base
    tok_json = Path(run) / "ckpt" / "step_000002" / "tokenizer.json"
    text = np.asarray(open_shards(Path(run).parent / "data").tokens("train"))
    cfg = sft_config(run, {"out": str(tmp_path / "s"), "pretrain_mix": 0.5, "batch_size": 8})
    assert sft_config(run, {"out": str(tmp_path / "s")}).pretrain_mix == 0.25  # the SFT default
    data, _, _ = sft_data(cfg, tok, tok_json, convs(100), convs(10, seed=1))
    plain = SFTBatches(data.batches.rows, data.batches.masks, 8, cfg.seed)
    windows = rows = 0
    for step in range(40):
        x, y = data.batches.get(step)
        assert torch.equal(x, data.batches.get(step)[0])  # a pure function of the index
        px, _ = plain.get(step)
        for i in range(len(x)):
            rows += 1
            if (y[i] >= 0).all():  # every target trained on: a window of the base's own text
                windows += 1
                seq = np.concatenate([x[i].numpy(), y[i, -1:].numpy()])
                starts = np.flatnonzero(text[: len(text) - len(seq) + 1] == seq[0])
                assert any((text[s: s + len(seq)] == seq).all() for s in starts)
            else:  # a conversation row: the one the batch without the mix has in its place
                assert torch.equal(x[i], px[i])
    assert 0.35 < windows / rows < 0.65
    from gptforge.explore.doctor import check_chat_tokens  # the doctor tells text windows from chat rows

    assert check_chat_tokens(tok, [data.batches.get(s) for s in range(4)]).status == "PASS"
    assert not any((plain.get(s)[1] >= 0).all(dim=1).any() for s in range(5))
    gone = tmp_path / "gone"
    shutil.copytree(run, gone)
    for tj in gone.glob("ckpt/*/trainer.json"):
        st = json.loads(tj.read_text())
        st["config"]["data"] = str(tmp_path / "nowhere")
        tj.write_text(json.dumps(st))
    with pytest.raises(UserError, match="--pretrain-mix: the base model's pretraining shards"):
        sft_data(sft_config(gone, {"out": ""}), tok, tok_json, convs(10), convs(2))
