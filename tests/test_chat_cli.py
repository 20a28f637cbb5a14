"""`gptforge sft` and `gptforge chat` end to end on a tiny model: the command runs on built-in
mixtures, chat answers one prompt (-p) and a scripted session, drops the oldest turns instead of
crashing at the context limit, and greedy chat is the same with and without the KV cache."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CHAT_TEXT as TEXT
from helpers import tiny_chat_base

from gptforge.chat.assistant import as_message, fit_context, respond
from gptforge.cli import main
from gptforge.engine import load_for_inference
from gptforge.tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("chat")
    tiny_chat_base(d, 96)
    assert main(["sft", "--ckpt", str(d / "base"), "--data", "arithmetic:40,identity,spelling:40",
                 "--out", str(d / "sft"), "--max-steps", "4", "--eval-interval", "2", "--progress", "none",
                 "--threads", "1"]) == 0
    return d / "sft"


def test_sft_command_trains_on_mixtures_and_reports(sft_run, capsys):
    recs = [json.loads(x) for x in (sft_run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == 4 and any("val_loss" in r for r in recs)
    cfg = json.loads((sft_run / "config.json").read_text())
    assert cfg["task"] == "sft" and cfg["init_from"].endswith("step_000002") and cfg["max_steps"] == 4
    assert cfg["lr"] == 3e-3  # inherited from the base run (its default), not reset


def test_sft_resume_and_errors(sft_run, capsys):
    assert main(["sft", "--resume", str(sft_run), "--max-steps", "5", "--progress", "none"]) == 0
    assert main(["sft", "--ckpt", str(sft_run), "--data", "arithmetic:x"]) == 2
    assert "the count after ':' must be a positive integer" in capsys.readouterr().err
    assert main(["sft", "--ckpt", str(sft_run)]) == 2
    assert "--data: what to finetune on?" in capsys.readouterr().err
    assert main(["sft", "--ckpt", str(sft_run), "--data", "nope.jsonl"]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err


def test_chat_one_shot_prints_the_reply_only(sft_run):
    r = subprocess.run([sys.executable, "-m", "gptforge", "chat", "--ckpt", str(sft_run),
                        "-p", "What is 2 + 3?",
                        "--temperature", "0", "--max-new-tokens", "12"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    model, tok, _ = load_for_inference(str(sft_run))
    convo = [{"role": "user", "content": "What is 2 + 3?"}]
    want = "".join(p.text for p in respond(model, tok, convo, 12, temperature=0) if p.kind == "text")
    assert r.stdout == want + "\n"


def test_greedy_chat_equals_without_the_kv_cache(sft_run):
    model, tok, _ = load_for_inference(str(sft_run))
    convo = [{"role": "user", "content": "How many r in strawberry?"}]
    with_cache = [(p.kind, p.text) for p in respond(model, tok, convo, 40, temperature=0)]
    without = [(p.kind, p.text) for p in respond(model, tok, convo, 40, temperature=0, use_cache=False)]
    assert with_cache == without and with_cache


def test_fit_context_drops_the_oldest_turns():
    tok = BPETokenizer.train(TEXT, vocab_size=320)
    system = {"role": "system", "content": "Be brief."}
    turns = []
    for i in range(10):
        turns += [{"role": "user", "content": f"Hello, how are you today? {i}"},
                  {"role": "assistant", "content": "Fine."}]
    convo = [system, *turns, {"role": "user", "content": "What is two and two?"}]
    kept, dropped = fit_context(convo, tok, 60)
    assert kept[0] == system and kept[-1] == convo[-1] and dropped > 0 and dropped % 2 == 0
    assert kept[1:] == convo[1 + dropped:]
    from gptforge.chat.render import render_for_completion

    assert len(render_for_completion(kept, tok)) <= 60
    assert len(render_for_completion([system, *convo[dropped - 1:]], tok)) > 60  # one turn more: too long
    from gptforge.errors import UserError

    with pytest.raises(UserError, match="more than the 5 the model's context leaves"):
        fit_context(convo, tok, 5)


def test_chat_session_survives_the_context_limit(sft_run):
    """A scripted terminal session far longer than the 96-token context: no crash, old turns dropped
    with a note, the commands work."""
    lines = ["/help", "/temperature 0", "/system Be brief."]
    lines += [f"Hello there, this is message number {i}, how are you today?" for i in range(12)]
    lines += ["/temperature abc", "/clear", "What is 2 + 3?", "/quit"]
    r = subprocess.run([sys.executable, "-m", "gptforge", "chat", "--ckpt", str(sft_run),
                        "--max-new-tokens", "8"],
                       input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "dropped the" in r.stderr and "oldest message(s)" in r.stderr
    assert "(cleared)" in r.stderr and "/temperature X" in r.stderr
    assert "temperature='abc'" in r.stderr
    assert r.stdout.count("assistant> ") == 13


def test_as_message_round_trips_tool_parts():
    from gptforge.chat.assistant import Piece

    msg = as_message([Piece("text", "Let "), Piece("text", "me."), Piece("tool_call", "2+3"),
                      Piece("tool_output", "5"), Piece("text", "It is 5.")])
    assert msg["content"] == [{"type": "text", "text": "Let me."}, {"type": "tool_call", "text": "2+3"},
                              {"type": "tool_output", "text": "5"}, {"type": "text", "text": "It is 5."}]
    assert as_message([Piece("text", "hi")]) == {"role": "assistant", "content": "hi"}


def test_data_spec_items():
    from gptforge.chat.sources import parse_spec
    from gptforge.errors import UserError

    assert parse_spec("identity, arithmetic:20,data/c:1.jsonl") == [
        ("identity", None), ("arithmetic", 20), ("data/c:1.jsonl", None)]
    for bad in ("identity,,x", "spelling:0", "spelling:-1", ""):
        with pytest.raises(UserError):
            parse_spec(bad)


def test_a_mixture_count_sizes_train_and_a_tenth_for_test():
    from gptforge.chat.sources import conversations

    assert len(list(conversations("arithmetic:50", "train"))) == 50
    assert len(list(conversations("arithmetic:50", "test"))) == 5
    train = {c[0]["content"] for c in conversations("arithmetic:300", "train")}
    test = {c[0]["content"] for c in conversations("arithmetic:300", "test")}
    assert not train & test


def test_sft_at_a_longer_context_keeps_more_turns(tmp_path, capsys):
    """SFT of a RoPE base (block 32) at block 128 runs, and its chat keeps five short turns that the
    base's context could not hold; a base with learned positions refuses the longer block in one line."""
    tiny_chat_base(tmp_path, 32)
    sft = {}
    for T in (32, 128):
        assert main(["sft", "--ckpt", str(tmp_path / "base"), "--data", "identity,smalltalk",
                     "--out", str(tmp_path / f"sft{T}"), "--block-size", str(T), "--max-steps", "2",
                     "--eval-interval", "2", "--eval-tokens", "128", "--progress", "none",
                     "--threads", "1"]) == 0
        model, _, _ = load_for_inference(str(tmp_path / f"sft{T}"))
        assert model.config.block_size == T
        sft[T] = tmp_path / f"sft{T}"
    lines = ["/temperature 0"] + [f"Hi {i}" for i in range(5)] + ["/quit"]
    for T, drops in ((32, True), (128, False)):
        r = subprocess.run([sys.executable, "-m", "gptforge", "chat", "--ckpt", str(sft[T]),
                            "--max-new-tokens", "4"], input="\n".join(lines) + "\n", capture_output=True,
                           text=True, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("assistant> ") == 5 and ("dropped the" in r.stderr) == drops, (T, r.stderr)
    capsys.readouterr()
    base = tmp_path / "gpt2base"
    from gptforge.train import Logger, make_config, train

    train(make_config({"data": str(tmp_path / "data"), "out": str(base), "preset": "gpt2", "depth": 1,
                       "block_size": 32, "batch_size": 4, "max_steps": 1, "eval_tokens": 32, "threads": 1,
                       "model": {"n_embd": 32, "n_head": 1}}), logger=Logger("none"))
    assert main(["sft", "--ckpt", str(base), "--data", "identity", "--out", str(tmp_path / "x"),
                 "--block-size", "64", "--max-steps", "1", "--progress", "none"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the data summary: one line, the reason
    assert last.startswith("gptforge: error: --block-size 64 is longer than the context of")
    assert "only rotary positions (RoPE" in last
