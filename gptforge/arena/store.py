"""Arena battles and votes in one SQLite file (Python's sqlite3), safe for concurrent writers.

    >>> store = VoteStore("arena.db")
    >>> bid = store.create_battle(session, "2+3?", "sft", "dpo", reply_a, reply_b, {"temperature": 0.7})
    >>> store.record_vote(bid, session, "a")          # A better; or "b", "tie", "bothbad"
    >>> store.fastchat_battles()                      # for gptforge.arena.ratings
    >>> store.preference_pairs()                      # for gptforge.arena.dpo

One row per battle (table ``battles``): ``id`` (a random 128-bit URL-safe token, so a battle
cannot be guessed), ``session_id`` (who was shown it), ``prompt``, ``model_a`` / ``model_b`` (the
model on side A, the left, and on side B), ``reply_a`` / ``reply_b`` (JSON: the assistant message
content, a string or a list of parts as gptforge.chat.render takes), ``sampling`` (JSON), ``meta``
(JSON, e.g. the task and reference answer of an automatic battle), ``vote`` (``a`` | ``b`` |
``tie`` | ``bothbad``, NULL until voted), ``created_at`` / ``voted_at`` (Unix seconds, UTC).

Durability and concurrency:

- WAL journal (readers never block the one writer; set once, persistent in the file) and
  ``synchronous=FULL``: every commit fsyncs the WAL before it returns, so a vote that
  ``record_vote`` has returned for survives ``kill -9`` of the process (NORMAL would too: the
  committed pages are already in the OS, which a killed process cannot lose) and also a power cut
  (which NORMAL could lose). One fsync per vote costs milliseconds; people vote far slower.
- Every call opens its own short connection, so one ``VoteStore`` can be shared by threads and
  used after ``fork``; writers queue on SQLite's lock (``busy_timeout``, 30 s).
- ``record_vote`` reads and updates in one ``BEGIN IMMEDIATE`` transaction (the write lock taken
  first), so of two concurrent votes on one battle exactly one wins and the other is refused.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from gptforge.errors import UserError

VOTES = ("a", "b", "tie", "bothbad")
WINNER = {"a": "model_a", "b": "model_b", "tie": "tie", "bothbad": "tie (bothbad)"}  # FastChat's names
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS battles (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    reply_a TEXT NOT NULL,
    reply_b TEXT NOT NULL,
    sampling TEXT NOT NULL DEFAULT '{}',
    meta TEXT NOT NULL DEFAULT '{}',
    vote TEXT CHECK (vote IS NULL OR vote IN ('a', 'b', 'tie', 'bothbad')),
    created_at REAL NOT NULL,
    voted_at REAL
);
CREATE INDEX IF NOT EXISTS battles_session ON battles (session_id);
"""


class BattleError(UserError):
    """A vote or lookup that is refused. ``kind``: ``unknown`` (no such battle), ``voted`` (already
    voted), ``forbidden`` (another session's battle) or ``invalid`` (not a vote value); a web page
    maps them to 404, 409, 403 and 400."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class VoteStore:
    """The battles of one SQLite file. Writable (the default): created with its table on first use
    and switched to WAL. ``readonly``: opened with ``mode=ro`` (what commands that only read use, so
    that pointing one at another program's SQLite file changes nothing); the file must exist and
    hold the ``battles`` table.

    Raises (constructor and every method):
        UserError: the file cannot be opened, is not an arena database, or is damaged (one line
            naming it; SQLite's own errors never escape).
    """

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path, self.readonly = Path(path), readonly
        if readonly and not self.path.is_file():
            raise UserError(f"{self.path}: no such arena database")
        with self._connect() as db:
            if readonly:
                if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'battles'"
                              ).fetchone() is None:
                    raise UserError(f"{self.path}: not an arena database (an SQLite file without its "
                                    "battles table)")
            else:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)

    def check(self) -> None:
        """SQLite's ``PRAGMA quick_check`` over the whole file (damage past the first page is found
        only by reading it), for a server to refuse a damaged file at start rather than fail later.

        Raises:
            UserError: the file is damaged (the message quotes SQLite's first finding).
        """
        with self._connect() as db:
            found = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if found != "ok":
            raise UserError(f"{self.path}: the arena database is damaged ({found}); restore a copy "
                            "or start a new one with --arena-db NEW")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction means what it says.
        # mode=ro: no write (no table, no journal-mode switch) can reach the file.
        target = f"{self.path.resolve().as_uri()}?mode=ro" if self.readonly else self.path
        try:
            db = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=self.readonly)
        except sqlite3.Error as e:
            raise UserError(f"{self.path}: cannot open the arena database ({e})") from None
        try:
            if not self.readonly:
                db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            yield db
        except sqlite3.DatabaseError as e:  # not a database, or damaged past its first page
            raise UserError(f"{self.path}: not usable as an arena database ({e})") from None
        finally:
            db.close()

    # -- writing ------------------------------------------------------------------------------
    def create_battle(self, session_id: str, prompt: str, model_a: str, model_b: str, reply_a, reply_b,
                      sampling: dict | None = None, meta: dict | None = None) -> str:
        """Store a battle shown to ``session_id`` (not yet voted); returns its id (unguessable).

        reply_a, reply_b: assistant message content, a str or a list of parts. Committed (fsynced)
        before it returns.
        """
        if model_a == model_b:
            raise ValueError(f"a battle needs two different models, not {model_a!r} twice")
        bid = secrets.token_urlsafe(16)
        with self._connect() as db:
            db.execute("INSERT INTO battles (id, session_id, prompt, model_a, model_b, reply_a, reply_b, "
                       "sampling, meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (bid, session_id, prompt, model_a, model_b, json.dumps(reply_a), json.dumps(reply_b),
                        json.dumps(sampling or {}), json.dumps(meta or {}), time.time()))
        return bid

    def record_vote(self, battle_id: str, session_id: str, vote: str) -> dict:
        """Record ``vote`` (a | b | tie | bothbad) for a battle of ``session_id``; returns the battle
        with its model names (what the page reveals after the vote). Durable when it returns.

        Raises:
            BattleError: an invalid vote, an unknown battle, another session's battle, or one
                already voted.
        """
        if vote not in VOTES:
            raise BattleError("invalid", f"vote {vote!r}: expected one of {', '.join(VOTES)}")
        with self._connect() as db, db:  # `with db`: COMMIT at the end, ROLLBACK on an exception
            db.execute("BEGIN IMMEDIATE")  # take the write lock before reading: no lost race
            row = db.execute("SELECT session_id, vote FROM battles WHERE id = ?", (battle_id,)).fetchone()
            _own(row, battle_id, session_id)
            if row["vote"] is not None:
                raise BattleError("voted", f"battle {battle_id!r} has already been voted on ({row['vote']})")
            db.execute("UPDATE battles SET vote = ?, voted_at = ? WHERE id = ?",
                       (vote, time.time(), battle_id))
        return self.get_battle(battle_id, session_id)

    # -- reading ------------------------------------------------------------------------------
    @staticmethod
    def _row(r: sqlite3.Row) -> dict:
        d = dict(r)
        for k in ("reply_a", "reply_b", "sampling", "meta"):
            d[k] = json.loads(d[k])
        return d

    def get_battle(self, battle_id: str, session_id: str) -> dict:
        """The battle as a dict (columns; JSON columns decoded), for its own session only.

        Raises:
            BattleError: unknown battle, or it belongs to another session (``forbidden``).
        """
        with self._connect() as db:
            r = db.execute("SELECT * FROM battles WHERE id = ?", (battle_id,)).fetchone()
        return self._row(_own(r, battle_id, session_id))

    def battles(self, voted_only: bool = True) -> list[dict]:
        """Every battle (voted ones only by default), oldest first. For offline analysis: it
        reads all sessions, so it is not for a web page."""
        where = "WHERE vote IS NOT NULL " if voted_only else ""
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM battles {where}ORDER BY created_at, id").fetchall()
        return [self._row(r) for r in rows]

    def fastchat_battles(self) -> list[dict]:
        """Voted battles in FastChat/LMSYS battle JSON: ``model_a``, ``model_b``, ``winner``
        (model_a | model_b | tie | tie (bothbad)), ``tstamp`` (vote time), ``question_id``
        (battle id), ``judge`` (session id)."""
        return [{"question_id": b["id"], "model_a": b["model_a"], "model_b": b["model_b"],
                 "winner": WINNER[b["vote"]], "judge": b["session_id"], "tstamp": b["voted_at"]}
                for b in self.battles()]

    def preference_pairs(self) -> list[dict]:
        """Battles with a winner as preference pairs in the messages format (what gptforge.arena.dpo
        reads, and TRL's conversational format): ``{"prompt": [user message], "chosen":
        [assistant message], "rejected": [assistant message]}``. Ties and both-bad give no pair."""
        loser = {"a": "reply_b", "b": "reply_a"}
        return [{"prompt": [{"role": "user", "content": b["prompt"]}],
                 "chosen": [{"role": "assistant", "content": b[f"reply_{b['vote']}"]}],
                 "rejected": [{"role": "assistant", "content": b[loser[b["vote"]]]}]}
                for b in self.battles() if b["vote"] in loser]


def _own(row: sqlite3.Row | None, battle_id: str, session_id: str) -> sqlite3.Row:
    """``row`` of battle ``battle_id``, when it exists and belongs to ``session_id``; else BattleError."""
    if row is None:
        raise BattleError("unknown", f"battle {battle_id!r}: no such battle")
    if row["session_id"] != session_id:
        raise BattleError("forbidden", f"battle {battle_id!r} belongs to another session")
    return row


def is_sqlite(path: str | Path) -> bool:
    """True when ``path`` is an SQLite database file (by its 16-byte header)."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False
