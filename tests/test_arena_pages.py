"""The arena inside `gptforge serve` (gptforge/serve/arena.py): blind battles streamed over SSE, votes
that reveal the names, sessions that keep battles private, the leaderboard, and the /arena page in a
real headless Chromium (Debian's chromium + chromium-driver, via selenium). Saves the README's
screenshot docs/arena.png when GPTFORGE_SCREENSHOTS=1.

API tests run against a live uvicorn server with two tiny random chat models (gibberish, but
greedy decoding makes each side's reply exactly the engine's reply of the model revealed for that
side) and a base model, which must never be drawn. The browser test serves the memorising model of
test_serve_page.py, whose greedy reply to "Show me some HTML" is an XSS payload, against a random one."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import headless_chromium, live_server, tiny_base_model, tiny_chat_model, wait

from gptforge.arena.store import VoteStore
from gptforge.chat.assistant import respond
from gptforge.serve.app import Limits, create_app
from gptforge.serve.arena import COOKIE, draw_pair

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "What is two and two?"
EVENT_KEYS = {"side", "text", "part", "finish", "battle_id", "error"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models():
    return {"alpha": tiny_chat_model(seed=0), "beta": tiny_chat_model(seed=1), "base": tiny_base_model()}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    db = tmp_path_factory.mktemp("arena") / "arena.db"
    app = create_app(models, limits=Limits(max_chars=2000), arena_db=db)
    with live_server(app) as url:
        yield url, db, app


@pytest.fixture()
def client(server):
    """A browser-like client: it got its session cookie from GET /arena."""
    with httpx.Client(base_url=server[0], timeout=60) as c:
        assert c.get("/arena").status_code == 200
        yield c


def battle(client: httpx.Client, prompt: str = PROMPT, **settings) -> tuple[list[dict], dict[str, str], str]:
    """Run one battle: (its events, each side's text, the battle id)."""
    body = {"prompt": prompt, "temperature": 0, "max_tokens": 16, **settings}
    with client.stream("POST", "/arena/battles", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    frames = raw.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    events = [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]
    texts = {"a": "", "b": ""}
    for e in events:
        if "text" in e:
            texts[e["side"]] += e["text"]
    assert "battle_id" in events[-1]
    return events, texts, events[-1]["battle_id"]


def greedy(models, name: str, n: int = 16) -> str:
    model, tok = models[name]
    return "".join(p.text for p in respond(model, tok, [{"role": "user", "content": PROMPT}], n,
                                           temperature=0, top_k=None))


def error_of(r: httpx.Response) -> dict:
    return r.json()["error"]


def test_draw_pair_two_different_models_in_both_orders():
    rng = random.Random(0)
    draws = [draw_pair(["x", "y", "z"], rng) for _ in range(300)]
    assert all(a != b for a, b in draws)
    assert {("x", "y"), ("y", "x")} <= set(draws)  # sides shuffled, not sorted
    assert {m for d in draws for m in d} == {"x", "y", "z"}


def test_battle_streams_both_replies_blind_then_the_vote_reveals_names(client, server, models):
    assert client.cookies.get(COOKIE)
    events, texts, bid = battle(client)
    assert all(set(e) <= EVENT_KEYS for e in events)  # no model names before the vote
    for side in "ab":
        assert sum(e.get("side") == side and "text" in e for e in events) > 1  # streamed, not at once
        finishes = [e["finish"] for e in events if e.get("side") == side and "finish" in e]
        assert finishes in (["stop"], ["length"])
    seen = client.get(f"/arena/battles/{bid}").json()
    assert seen["prompt"] == PROMPT and "model_a" not in seen and seen["vote"] is None
    assert (seen["reply_a"], seen["reply_b"]) == (texts["a"], texts["b"])

    r = client.post(f"/arena/battles/{bid}/vote", json={"vote": "b"})
    assert r.status_code == 200
    out = r.json()
    assert out["id"] == bid and out["vote"] == "b" and {out["model_a"], out["model_b"]} == {"alpha", "beta"}
    # greedy decoding: each side is exactly the engine's reply of the model named for that side
    assert texts["a"] == greedy(models, out["model_a"]) and texts["b"] == greedy(models, out["model_b"])
    assert client.get(f"/arena/battles/{bid}").json()["model_a"] == out["model_a"]  # named once voted

    stored = {b["id"]: b for b in VoteStore(server[1]).battles()}[bid]  # the vote is in the database
    assert stored["vote"] == "b" and stored["session_id"] == client.cookies.get(COOKIE)
    assert (stored["model_a"], stored["model_b"]) == (out["model_a"], out["model_b"])
    assert stored["reply_a"] == texts["a"] and stored["prompt"] == PROMPT
    assert stored["sampling"] == {"temperature": 0, "top_k": None, "top_p": 1.0, "max_tokens": 16}


def test_session_cookie_is_http_only_and_given_by_a_first_battle_too(server):
    r = httpx.get(server[0] + "/arena")
    cookie = r.headers["set-cookie"].lower()
    assert COOKIE in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert "path=/arena" in cookie
    with httpx.Client(base_url=server[0], timeout=60) as fresh:  # an API client that never opened the page
        _, _, bid = battle(fresh, max_tokens=4)
        assert fresh.cookies.get(COOKIE)
        assert fresh.post(f"/arena/battles/{bid}/vote", json={"vote": "tie"}).status_code == 200


def test_votes_refused_with_clear_errors(client, server):
    _, _, bid = battle(client, max_tokens=4)
    with httpx.Client(base_url=server[0], timeout=60) as other:
        other.get("/arena")
        assert other.cookies.get(COOKIE) != client.cookies.get(COOKIE)
        for c in (other, httpx.Client(base_url=server[0])):  # another session, or no cookie at all
            r = c.post(f"/arena/battles/{bid}/vote", json={"vote": "a"})
            assert r.status_code == 403 and error_of(r)["code"] == "not_your_battle"
            r = c.get(f"/arena/battles/{bid}")
            assert r.status_code == 403 and "reply_a" not in r.text
    for body in ({"vote": "maybe"}, {"vote": 1}, {}):
        r = client.post(f"/arena/battles/{bid}/vote", json=body)
        assert r.status_code == 400 and error_of(r)["param"] == "vote"
    r = client.post("/arena/battles/no-such-battle/vote", json={"vote": "a"})
    assert r.status_code == 404 and error_of(r)["code"] == "battle_not_found"
    assert client.post(f"/arena/battles/{bid}/vote", json={"vote": "a"}).status_code == 200
    r = client.post(f"/arena/battles/{bid}/vote", json={"vote": "b"})
    assert r.status_code == 409 and error_of(r)["code"] == "already_voted"
    assert {b["id"]: b["vote"] for b in VoteStore(server[1]).battles()}[bid] == "a"  # the first vote stands


def test_a_client_that_leaves_mid_battle_stops_both_generations(client, server, models):
    long = {}
    for name in ("alpha", "beta"):  # greedy: which model's reply is still running after 200 tokens
        model, tok = models[name]
        ended = []
        list(respond(model, tok, [{"role": "user", "content": PROMPT}], 200, temperature=0, top_k=None,
                     ended=ended))
        long[name] = not ended[0]
    assert any(long.values()), long  # the premise: at least one generation to stop
    store, served = VoteStore(server[1]), server[2].state.served
    before = len(store.battles(voted_only=False))
    cancelled = sum(s.batcher.cancelled for s in served.values())
    body = {"prompt": PROMPT, "temperature": 0, "max_tokens": 200}
    # these tiny models decode 200 tokens in tens of ms, less than the server may take to notice a
    # hang-up; 2 ms per forward pass (a model of a realistic speed) leaves the client time to leave
    hooks = [models[n][0].register_forward_pre_hook(lambda *_: time.sleep(0.002)) for n in ("alpha", "beta")]
    try:
        with client.stream("POST", "/arena/battles", json=body) as r:
            next(r.iter_lines())  # the first event, then hang up
        deadline = time.monotonic() + 20
        while (sum(s.batcher.cancelled for s in served.values()) < cancelled + sum(long.values())
               or any(s.batcher.running for s in served.values())):
            assert time.monotonic() < deadline, ("the generations went on after the client left", long,
                                                 [s.batcher.stats() for s in served.values()])
            time.sleep(0.02)
    finally:
        for h in hooks:
            h.remove()
    assert len(store.battles(voted_only=False)) == before  # an unfinished battle is not stored


@pytest.mark.parametrize("body, param", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": 3}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),  # over max_chars
    ({"prompt": "hi", "temperature": 3}, "temperature"),
    ({"prompt": "hi", "max_tokens": 250}, "max_tokens"),  # the contexts are 256
    ({"prompt": "hi", "top_p": 0}, "top_p"),
])
def test_bad_battle_requests_are_400(client, body, param):
    r = client.post("/arena/battles", json=body)
    assert r.status_code == 400 and error_of(r)["param"] == param
    assert error_of(r)["type"] == "invalid_request_error"


def test_leaderboard_after_votes(client, server):
    for i in range(4):  # alpha wins three, one tie (on top of the other tests' votes)
        _, _, bid = battle(client, max_tokens=4)
        sides = {b["id"]: b for b in VoteStore(server[1]).battles(voted_only=False)}[bid]  # the test peeks
        vote = "tie" if i == 3 else "a" if sides["model_a"] == "alpha" else "b"
        assert client.post(f"/arena/battles/{bid}/vote", json={"vote": vote}).status_code == 200
    board = client.get("/arena/leaderboard.json").json()
    voted = VoteStore(server[1]).fastchat_battles()
    assert board["battles"] == len(voted) >= 4 and board["rounds"] >= 100
    rows = {m["model"]: m for m in board["models"]}
    assert set(rows) == {"alpha", "beta"}  # the base model is never drawn
    for m in rows.values():
        assert m["lower"] <= m["rating"] <= m["upper"] and m["battles"] == len(voted) and m["rank"] >= 1
    assert rows["alpha"]["rating"] + rows["beta"]["rating"] == pytest.approx(2000)  # mean 1000
    png = client.get("/arena/leaderboard.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    page = client.get("/arena/leaderboard")
    assert page.status_code == 200 and "leaderboard.js" in page.text


def test_fewer_than_two_chat_models_the_arena_says_so(models, tmp_path):
    db = tmp_path / "arena.db"
    app = create_app({"alpha": models["alpha"], "base": models["base"]}, api_key="k", arena_db=db)
    with live_server(app) as url:
        page = httpx.get(url + "/arena")
        assert page.status_code == 400 and "needs at least two chat models" in page.text
        r = httpx.post(url + "/arena/battles", json={"prompt": "hi"}, headers={"Authorization": "Bearer k"})
        assert r.status_code == 400 and error_of(r)["code"] == "arena_unavailable"
        assert httpx.post(url + "/arena/battles", json={"prompt": "hi"}).status_code == 401  # the key, as /v1
        board = httpx.get(url + "/arena/leaderboard.json").json()
        assert board["battles"] == 0 and board["models"] == []
        r = httpx.get(url + "/arena/leaderboard.png")
        assert r.status_code == 404 and error_of(r)["code"] == "no_votes"
    assert not db.exists()  # no arena, no file


# --- the page in a real browser -------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as driver:
        yield driver


def state(want: str):
    """A wait condition: the page's body has data-state ``want``."""
    from selenium.webdriver.common.by import By

    return lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == want


def test_arena_page_battle_vote_reveal_and_leaderboard(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from test_serve_page import PAYLOAD, memorising_model

    d = browser
    app = create_app({"memorised": memorising_model(), "random": tiny_chat_model(block_size=128, seed=2)},
                     arena_db=tmp_path / "arena.db")
    with live_server(app) as url:
        d.get(url + "/arena")
        wait(d, state("idle"))
        for field, value in (("temperature", "0"), ("max-tokens", "80")):
            d.find_element(By.ID, field).clear()
            d.find_element(By.ID, field).send_keys(value)
        d.execute_script("""window.changes = 0;
            new MutationObserver(() => window.changes++).observe(document.querySelector('.sides'),
                {childList: true, subtree: true, characterData: true});""")
        d.find_element(By.ID, "input").send_keys("Show me some HTML")
        d.find_element(By.ID, "send").click()
        wait(d, state("ready"))

        replies = {s: d.find_element(By.CSS_SELECTOR, f"#side-{s} .content").text for s in "ab"}
        assert PAYLOAD in replies.values() and all(replies.values())  # both replies shown
        assert d.execute_script("return window.changes") > 5  # streamed piece by piece
        assert not d.find_elements(By.CSS_SELECTOR, ".sides img, .sides script, .sides b")  # text, not HTML
        assert d.execute_script("return window.xss") is None
        assert [d.find_element(By.ID, f"name-{s}").text for s in "ab"] == ["", ""]
        assert "memorised" not in d.page_source  # the page does not know the names yet
        payload_side = "a" if replies["a"] == PAYLOAD else "b"

        d.find_element(By.CSS_SELECTOR, f"button.vote[data-vote='{payload_side}']").click()
        wait(d, state("voted"))
        names = {s: d.find_element(By.ID, f"name-{s}").text for s in "ab"}
        assert names[payload_side] == "memorised" and set(names.values()) == {"memorised", "random"}
        assert "memorised" in d.find_element(By.ID, "result").text
        assert all(b.get_attribute("disabled") for b in d.find_elements(By.CSS_SELECTOR, "button.vote"))
        # the README's screenshot: refreshed on request only, so a test run leaves the tree clean
        shot = tmp_path / "arena.png"
        if os.environ.get("GPTFORGE_SCREENSHOTS"):
            shot = ROOT / "docs" / "arena.png"
        assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

        d.get(url + "/arena/leaderboard")
        wait(d, state("ready"))
        rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                for tr in d.find_elements(By.CSS_SELECTOR, "#table tbody tr")]
        assert [r[1] for r in rows] == ["memorised", "random"] and [r[4] for r in rows] == ["1", "1"]
        assert d.execute_script("return document.getElementById('plot').naturalWidth") > 100  # the PNG
        assert "1 voted battle," in d.find_element(By.ID, "summary").text
        assert d.save_screenshot(str(tmp_path / "leaderboard.png"))


def test_serve_refuses_a_damaged_or_foreign_arena_database_at_start(models, tmp_path):
    """Issues 27.3 and 27.10: `PRAGMA quick_check` when the server opens the file; a file the arena
    only reads (fewer than two chat models) is opened read-only and left as it was."""
    from test_arena_store import damaged_arena, foreign_sqlite

    from gptforge.errors import UserError

    db = damaged_arena(tmp_path / "arena.db")
    for chosen in ({"alpha": models["alpha"], "beta": models["beta"]}, {"alpha": models["alpha"]}):
        with pytest.raises(UserError, match="damaged"):
            create_app(chosen, arena_db=db)
    other = tmp_path / "other.db"
    before = foreign_sqlite(other)
    with pytest.raises(UserError, match="not an arena database"):
        create_app({"alpha": models["alpha"]}, arena_db=other)
    assert other.read_bytes() == before and not Path(f"{other}-wal").exists()


def test_a_prompt_with_a_lone_surrogate_is_400_before_generating(client, server):
    """Issue 27.9: both replies were generated, then storing failed and the stream was cut."""
    before = len(VoteStore(server[1]).battles(voted_only=False))
    served = server[2].state.served
    finished = sum(s.batcher.stats()["finished"] for s in served.values())
    r = client.post("/arena/battles", content=b'{"prompt": "hi \\ud800 there", "max_tokens": 4}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r)["param"] == "prompt" and "surrogate" in error_of(r)["message"]
    assert len(VoteStore(server[1]).battles(voted_only=False)) == before
    assert sum(s.batcher.stats()["finished"] for s in served.values()) == finished  # nothing generated


def test_battle_limits_and_errors_never_tell_which_models_were_drawn(tmp_path):
    """Issue 28.2: the page's default max tokens (128) was the demo models' whole context, and the
    error named one of the hidden models. Defaults fit the smallest context; an error is the same
    whichever pair was drawn, and names none."""
    small = {"gamma": tiny_chat_model(block_size=64, seed=3)}
    app = create_app({"alpha": tiny_chat_model(seed=0), "beta": tiny_chat_model(seed=1), **small},
                     arena_db=tmp_path / "arena.db")
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        c.get("/arena")
        events = []
        with c.stream("POST", "/arena/battles", json={"prompt": PROMPT, "temperature": 0}) as r:
            assert r.status_code == 200  # the default fits the smallest context
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        bid = next(e["battle_id"] for e in events if "battle_id" in e)
        assert VoteStore(tmp_path / "arena.db").battles(voted_only=False)[0]["sampling"]["max_tokens"] == 32
        assert not any("error" in e for e in events) and bid
        for body in ({"prompt": PROMPT, "max_tokens": 100}, {"prompt": "The cat sat on the mat. " * 20}):
            answers = {c.post("/arena/battles", json=body).text for _ in range(12)}  # many draws
            assert len(answers) == 1  # the same answer whichever pair was drawn
            text = answers.pop()
            assert '"error"' in text and not any(n in text for n in ("alpha", "beta", "gamma"))
    page = (ROOT / "gptforge" / "serve" / "static" / "arena.html").read_text()
    assert 'id="max-tokens"' in page and 'value="128"' not in page  # empty: the server's default
