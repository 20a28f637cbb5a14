"""`gptforge arena ratings` (battle JSON, vote database, PNG, JSON, bad input) and `gptforge arena
auto` with two tiny chat models and the oracle judge."""

import json

import pytest
from helpers import tiny_chat_base
from test_arena_ratings import synthetic

from gptforge.arena.auto import oracle_vote
from gptforge.arena.store import VoteStore
from gptforge.cli import main


def test_ratings_command(tmp_path, capsys):
    f = tmp_path / "battles.json"
    f.write_text(json.dumps(synthetic(200)))
    assert main(["arena", "ratings", "--battles", str(f), "--rounds", "100", "--png", str(tmp_path / "r.png"),
                 "--anchor", "gamma"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["rank", "model", "rating", "95%"] and "gamma" in out
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["arena", "ratings", "--battles", str(f), "--rounds", "100", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["battles"] == 200 and len(res["leaderboard"]) == 5
    db = VoteStore(tmp_path / "a.db")
    for b in synthetic(50):
        bid = db.create_battle("s", "q", b["model_a"], b["model_b"], "x", "y")
        vote = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "bothbad"}[b["winner"]]
        db.record_vote(bid, "s", vote)
    assert main(["arena", "ratings", "--db", str(tmp_path / "a.db"), "--rounds", "100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["battles"] == 50
    f.write_text('[{"model_a": "x", "model_b": "y", "winner": "A"}]')
    assert main(["arena", "ratings", "--battles", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "battles.json: row 0: unknown winner 'A'" in err


def test_oracle_vote():
    assert [oracle_vote(a, b) for a, b in ((1, 0), (0, 1), (1, 1), (0, 0))] == ["a", "b", "tie", "bothbad"]


def test_auto_command(tmp_path, capsys):
    import shutil

    from helpers import randomize

    from gptforge.checkpoint import load_checkpoint, save_checkpoint

    run, tok = tiny_chat_base(tmp_path, 64)
    model, state = load_checkpoint(run)
    randomize(model, seed=5)
    save_checkpoint(tmp_path / "other", model, [], state,
                    tokenizer_json=run / "ckpt" / "step_000002" / "tokenizer.json")
    assert main(["arena", "auto", "--ckpt", f"a={run}", "--ckpt", f"b={tmp_path / 'other'}",
                 "--tasks", "arithmetic", "--n", "3", "--db", str(tmp_path / "auto.db"), "--rounds", "100",
                 "--json", "--all-pairs"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["battles"] == 3 and set(res["accuracy"]) == {"a", "b"}
    stored = VoteStore(tmp_path / "auto.db").battles()
    assert len(stored) == 3 and {b["session_id"] for b in stored} == {"oracle"}
    assert all(b["meta"]["task"] == "arithmetic" for b in stored)
    assert main(["arena", "auto", "--ckpt", str(run), "--tasks", "arithmetic"]) == 2
    assert "at least two models" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "other")
    with pytest.raises(SystemExit):
        main(["arena", "auto", "--judge", "human"])
