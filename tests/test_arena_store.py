"""Arena votes in SQLite: refusals, per-session visibility, exports, concurrent writers (threads and
processes), and votes acknowledged by a writer surviving its kill -9 under load."""

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gptforge.arena.ratings import check_battle
from gptforge.arena.store import BattleError, VoteStore

ROOT = Path(__file__).resolve().parents[1]


def test_votes_refusals_visibility_and_exports(tmp_path):
    s = VoteStore(tmp_path / "a.db")
    six = [{"type": "text", "text": "6"}]
    b1 = s.create_battle("alice", "2+3?", "sft", "dpo", "5", six, {"temperature": 0.7})
    b2 = s.create_battle("bob", "hi", "dpo", "sft", "hello", "hey")
    assert len(b1) >= 22 and b1 != b2
    with pytest.raises(BattleError, match="belongs to another session") as e:
        s.get_battle(b1, "bob")
    assert e.value.kind == "forbidden"
    with pytest.raises(BattleError, match="belongs to another session"):
        s.record_vote(b1, "bob", "a")
    with pytest.raises(BattleError, match="no such battle") as e:
        s.record_vote("nope", "alice", "a")
    assert e.value.kind == "unknown"
    with pytest.raises(BattleError, match="expected one of a, b, tie, bothbad"):
        s.record_vote(b1, "alice", "left")
    shown = s.record_vote(b1, "alice", "b")
    assert shown["model_b"] == "dpo" and shown["vote"] == "b" and shown["sampling"] == {"temperature": 0.7}
    with pytest.raises(BattleError, match="already been voted on") as e:
        s.record_vote(b1, "alice", "a")
    assert e.value.kind == "voted"
    s.record_vote(b2, "bob", "bothbad")
    fc = s.fastchat_battles()
    assert [(b["model_a"], b["winner"]) for b in fc] == [("sft", "model_b"), ("dpo", "tie (bothbad)")]
    for i, b in enumerate(fc):
        check_battle(b, f"row {i}")
    assert s.preference_pairs() == [{"prompt": [{"role": "user", "content": "2+3?"}],
                                     "chosen": [{"role": "assistant", "content": six}],
                                     "rejected": [{"role": "assistant", "content": "5"}]}]
    (tmp_path / "junk.db").write_text("not a database at all, not even close......")
    with pytest.raises(Exception, match="not usable as an arena database"):
        VoteStore(tmp_path / "junk.db")


def test_concurrent_threads_one_vote_per_battle(tmp_path):
    s = VoteStore(tmp_path / "t.db")

    def worker(k):
        ids = [s.create_battle(f"s{k}", f"p{i}", "m1", "m2", "x", "y") for i in range(10)]
        for i, bid in enumerate(ids):
            s.record_vote(bid, f"s{k}", ("a", "b", "tie", "bothbad")[i % 4])
        return ids

    with ThreadPoolExecutor(8) as pool:
        ids = [b for chunk in pool.map(worker, range(8)) for b in chunk]
    assert len(s.battles()) == 80 == len(set(ids))
    # a race on one battle: exactly one vote wins, the rest are refused as already voted
    bid = s.create_battle("race", "p", "m1", "m2", "x", "y")
    results, barrier = [], threading.Barrier(8)

    def vote(v):
        barrier.wait()
        try:
            s.record_vote(bid, "race", v)
            results.append("ok")
        except BattleError as e:
            results.append(e.kind)

    threads = [threading.Thread(target=vote, args=(v,)) for v in ("a", "b") * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["voted"] * 7


WRITER = """
import sys
from gptforge.arena.store import VoteStore
store, tag, i = VoteStore(sys.argv[1]), sys.argv[2], 0
while True:
    bid = store.create_battle(tag, f"prompt {i}", "m1", "m2", "x" * 200, "y" * 200, {"seed": i})
    vote = ("a", "b", "tie", "bothbad")[i % 4]
    store.record_vote(bid, tag, vote)
    print(bid, vote, flush=True)  # the acknowledgement: only after record_vote has committed
    i += 1
"""


def test_acknowledged_votes_survive_kill_9_under_load(tmp_path):
    """Four writer processes vote as fast as they can; each is killed with SIGKILL mid-stream; every
    vote a writer acknowledged is in the database afterwards."""
    db = tmp_path / "k.db"
    VoteStore(db)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), f"w{k}"], stdout=subprocess.PIPE,
                              text=True, env=env) for k in range(4)]
    acks: dict[int, list[str]] = {k: [] for k in range(4)}

    def read(k):
        for line in procs[k].stdout:  # until EOF: lines already in the pipe are read after the kill
            if line.endswith("\n"):
                acks[k].append(line.split()[0] + " " + line.split()[1])
            if len(acks[k]) == 30:
                procs[k].send_signal(signal.SIGKILL)  # mid-stream, other writers still running

    readers = [threading.Thread(target=read, args=(k,)) for k in range(4)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(timeout=120)
    for p in procs:
        p.kill()
        assert p.wait() == -signal.SIGKILL
    got = {(b["id"], b["vote"]) for b in VoteStore(db).battles()}
    for k in range(4):
        assert len(acks[k]) >= 30
        for ack in acks[k]:
            bid, vote = ack.split()
            assert (bid, vote) in got, f"acknowledged vote {ack} of writer {k} lost"


def foreign_sqlite(path: Path) -> bytes:
    """Another program's SQLite file (rollback journal, no arena table); returns its bytes."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (body TEXT)")
    db.execute("INSERT INTO notes VALUES ('keep me')")
    db.commit()
    db.close()
    return path.read_bytes()


def test_commands_that_only_read_leave_a_foreign_sqlite_file_alone(tmp_path, capsys):
    """Issue 27.3: `arena ratings --db` and `dpo --db` created arena tables in any SQLite file and
    switched it to WAL for good; they open it read-only now and say it is not an arena database."""
    from gptforge.arena.dpo import read_preferences
    from gptforge.cli import main
    from gptforge.errors import UserError

    other = tmp_path / "other.db"
    before = foreign_sqlite(other)
    assert main(["arena", "ratings", "--db", str(other), "--rounds", "100"]) == 2
    err = capsys.readouterr().err
    assert "not an arena database" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UserError, match="not an arena database"):
        read_preferences(other)
    with pytest.raises(UserError, match="not an arena database"):
        VoteStore(other, readonly=True)
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]
    # an arena file is read as before, and reading writes nothing to it either
    s = VoteStore(tmp_path / "a.db")
    s.record_vote(s.create_battle("x", "hi", "m1", "m2", "a", "b"), "x", "a")
    data = (tmp_path / "a.db").read_bytes()
    assert len(VoteStore(tmp_path / "a.db", readonly=True).preference_pairs()) == 1
    assert (tmp_path / "a.db").read_bytes() == data


def damaged_arena(path: Path) -> Path:
    """An arena file with enough battles for many pages, its pages past the first overwritten."""
    s = VoteStore(path)
    for i in range(60):
        bid = s.create_battle("x", f"prompt {i} " + "words " * 100, "m1", "m2", "a" * 200, "b" * 200)
        s.record_vote(bid, "x", "a")
    raw = bytearray(path.read_bytes())
    assert len(raw) > 8 * 4096 and not Path(f"{path}-wal").exists()
    raw[3 * 4096:] = b"\xa5" * (len(raw) - 3 * 4096)
    path.write_bytes(bytes(raw))
    return path


def test_a_damaged_arena_database_is_one_line_everywhere(tmp_path, capsys):
    """Issue 27.10: damage past the first page gave sqlite3.DatabaseError tracebacks (ratings, dpo)
    and a 500 from the leaderboard; now one line (exit 2), and `check` (serve's start) finds it."""
    from gptforge.arena.dpo import read_preferences
    from gptforge.cli import main
    from gptforge.errors import UserError

    db = damaged_arena(tmp_path / "arena.db")
    assert main(["arena", "ratings", "--db", str(db), "--rounds", "100"]) == 2
    err = capsys.readouterr().err
    assert str(db) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(UserError, match="arena database"):
        read_preferences(db)
    with pytest.raises(UserError, match="damaged"):
        VoteStore(db, readonly=True).check()
