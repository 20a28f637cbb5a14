"""The README's sample files in docs/examples load, and the commands it shows run on them:
`gptforge dpo --prefs docs/examples/prefs.jsonl` and `gptforge arena ratings --battles
docs/examples/battles.json`."""

from pathlib import Path

from helpers import tiny_chat_base

from gptforge.arena.dpo import encode_pairs, read_preferences
from gptforge.arena.ratings import leaderboard, read_battles
from gptforge.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def test_sample_preference_pairs_load_and_train(tmp_path, capsys):
    pairs, skipped = read_preferences(EXAMPLES / "prefs.jsonl")
    assert skipped == []
    assert len(pairs) == 14
    assert all(p["prompt"][-1]["role"] == "user" and p["chosen"] != p["rejected"] for p in pairs)
    run, tok = tiny_chat_base(tmp_path, 64)
    rows, masks, stats = encode_pairs(pairs, tok, 64)
    assert rows.shape == (2, 14, 65) and masks.sum() > 0
    assert main(["dpo", "--ckpt", str(run), "--prefs", str(EXAMPLES / "prefs.jsonl"),
                 "--out", str(tmp_path / "d"), "--max-steps", "1", "--batch-size", "2", "--threads", "1",
                 "--progress", "none"]) == 0
    assert "dpo data: 14 pairs (12 train, 2 held out)" in capsys.readouterr().err


def test_sample_battles_rate_the_models(capsys):
    battles = read_battles(EXAMPLES / "battles.json")
    assert len(battles) == 45
    rows = leaderboard(battles, rounds=100)
    assert [r.model for r in rows][-1] == "base" and {r.model for r in rows} == {"base", "sft", "dpo"}
    assert main(["arena", "ratings", "--battles", str(EXAMPLES / "battles.json"), "--rounds", "100"]) == 0
    assert "base" in capsys.readouterr().out
