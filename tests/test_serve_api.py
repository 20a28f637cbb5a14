"""`gptforge serve` driven by the real `openai` client against a live uvicorn server on a free port:
chat (streamed and not), completions, models, every error mapping, auth, stop strings, seeds, n;
then concurrency: 32 streaming clients x 2 requests, a disconnect cancelling its generation, and
429 when the queue is full. The models are tiny random GPTs (their text is gibberish; what is tested
is that the server returns exactly what the engine generates)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serve_helpers import live_server, tiny_base_model, tiny_chat_model

from gptforge.chat.assistant import TurnDecoder, respond
from gptforge.engine import generate
from gptforge.serve.app import Limits, create_app
from gptforge.serve.batcher import Inbox, StopStrings

USER = [{"role": "user", "content": "What is two and two?"}]
ASSISTANT = {"role": "assistant", "content": "Fine."}


@pytest.fixture(scope="module")
def models():
    return {"chat": tiny_chat_model(), "base": tiny_base_model(2048)}


@pytest.fixture(scope="module")
def server(models):
    limits = Limits(max_messages=8, max_chars=2000, max_body_bytes=8192, max_n=4)
    app = create_app(models, limits=limits)
    with live_server(app) as url:
        yield url, app


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def stream_text(stream) -> tuple[str, str, object]:
    """(concatenated content, finish_reason, usage) of a streamed chat completion."""
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return text, finish, usage


def test_models_and_health(client, server):
    cards = {m.id: m for m in client.models.list()}
    assert set(cards) == {"chat", "base"}
    assert cards["chat"].model_extra["chat"] is True and cards["base"].model_extra["chat"] is False
    assert client.models.retrieve("chat").model_extra["context_length"] == 256
    health = httpx.get(server[0] + "/health").json()
    assert health["status"] == "ok" and set(health["models"]) == {"chat", "base"}


def test_chat_greedy_is_the_engines_reply_streamed_or_not(client, models):
    model, tok = models["chat"]
    want = "".join(p.text for p in respond(model, tok, USER, 40, temperature=0, top_k=None))
    r = client.chat.completions.create(model="chat", messages=USER, temperature=0, max_tokens=40)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "chat"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    assert r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.completion_tokens <= 40 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    s = client.chat.completions.create(model="chat", messages=USER, temperature=0, max_tokens=40, stream=True,
                                       stream_options={"include_usage": True})
    text, finish, usage = stream_text(s)
    assert text == want and finish == r.choices[0].finish_reason
    assert usage.model_dump() == r.usage.model_dump()


def test_sse_wire_format(server):
    body = {"model": "chat", "messages": USER, "max_tokens": 5, "stream": True, "temperature": 0}
    with httpx.stream("POST", server[0] + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and "usage" not in chunks[-1]


def test_seed_n_and_stop(client):
    kw = dict(model="chat", messages=USER, temperature=1.0, max_tokens=30, seed=7)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw, n=3)
    assert [c.index for c in b.choices] == [0, 1, 2]
    assert b.choices[0].message.content == a.choices[0].message.content  # choice i samples with seed + i
    assert len({c.message.content for c in b.choices}) > 1
    text = a.choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 3]
    c = client.chat.completions.create(**kw, stop=[stop, "zzzz"])
    assert c.choices[0].message.content == text[:text.index(stop)] and c.choices[0].finish_reason == "stop"
    s = client.chat.completions.create(**kw, stop=stop, stream=True)
    assert stream_text(s)[:2] == (text[:text.index(stop)], "stop")


def test_top_k_through_extra_body(client):
    kw = dict(model="chat", messages=USER, max_tokens=20, seed=3)
    greedy = client.chat.completions.create(**kw, temperature=0).choices[0].message.content
    top1 = client.chat.completions.create(**kw, temperature=1.5, extra_body={"top_k": 1})
    assert top1.choices[0].message.content == greedy


def test_completions_for_a_base_model(client, models):
    r = client.completions.create(model="base", prompt="the cat", max_tokens=25, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 25 and len(r.choices[0].text) == 25  # one char per token
    s = client.completions.create(model="base", prompt="the cat", max_tokens=25, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text


def test_a_request_joins_a_running_batch(server, client, models):
    """Continuous batching: a request sent while a long one streams is answered while the long one
    is still running, with the reply it gets alone; 8 greedy requests of different lengths sent at
    once each get the engine's reply for their own prompt."""
    url, app = server
    b = app.state.served["base"].batcher
    model, tok = models["base"]
    body = {"model": "base", "prompt": "the", "max_tokens": 2000, "stream": True, "temperature": 0}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)  # the long request is running
        short = client.completions.create(model="base", prompt="a cat", max_tokens=6, temperature=0)
        # (the short row leaves the batch just after its last event is sent)
        assert wait_for(lambda: b.running == 1, 5), "the short request waited for the long one"
        assert any(line.startswith("data: {") for line in (next(lines), next(lines)))  # still streaming
    assert short.choices[0].text == tok.decode(generate(model, [tok.encode("a cat")], 6, temperature=0)[0])
    prompts = ["a", "the cat sat", "on the mat, and", "z", "hello there", "b c", "one two three four", "."]
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda p: client.completions.create(
            model="base", prompt=p, max_tokens=12, temperature=0).choices[0].text, prompts))
    assert texts == [tok.decode(generate(model, [tok.encode(p)], 12, temperature=0)[0]) for p in prompts]


def error_of(exc) -> dict:
    return exc.value.response.json()["error"]


@pytest.mark.parametrize("kwargs, status, param", [
    (dict(model="nope"), 404, "model"),
    (dict(messages=[]), 400, "messages"),
    (dict(messages=[{"role": "user", "content": ""}]), 400, "messages"),
    (dict(messages=[{"role": "bot", "content": "hi"}]), 400, "messages"),
    (dict(messages=[{"role": "user", "content": "a"}, ASSISTANT]), 400, "messages"),  # ends with assistant
    (dict(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), 400, "messages"),
    (dict(messages=[{"role": "user", "content": "a"}, ASSISTANT] * 4 + USER), 400, "messages"),  # 9 > 8
    (dict(messages=[{"role": "user", "content": "x" * 2001}]), 400, "messages"),  # over max_chars
    (dict(max_tokens=250), 400, "max_tokens"),  # the context is 256
    (dict(max_tokens=0), 400, "max_tokens"),
    (dict(temperature=2.5), 400, "temperature"),
    (dict(temperature=-1), 400, "temperature"),
    (dict(top_p=0), 400, "top_p"),
    (dict(n=5), 400, "n"),
    (dict(seed=-1), 400, "seed"),
    (dict(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (dict(extra_body={"top_k": 0}), 400, "top_k"),
    (dict(extra_body={"top_k": "ten"}), 400, "top_k"),
])
def test_bad_requests_get_openai_errors(client, kwargs, status, param):
    kw = {"model": "chat", "messages": USER, **kwargs}
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**kw)
    assert e.value.status_code == status
    err = error_of(e)
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_prompt_longer_than_the_context(client):
    long = {"role": "user", "content": "The cat sat on the mat. " * 70}  # 283 tokens, context 256
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=[long], max_tokens=10)
    assert error_of(e)["code"] == "context_length_exceeded"
    # an older turn that does not fit is dropped instead, and the header says so
    old = [{"role": "user", "content": "The cat sat on the mat. " * 60}, ASSISTANT]
    r = client.chat.completions.with_raw_response.create(model="chat", messages=old + USER, max_tokens=10)
    assert r.headers["x-gptforge-dropped-messages"] == "2"


def test_malformed_body_size_and_unknown_path(server, client):
    url = server[0]
    r = httpx.post(url + "/v1/chat/completions", content=b'{"model": "chat", "messages": [',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url + "/v1/chat/completions", content=b"[1, 2]")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url + "/v1/chat/completions", json={"model": "chat", "messages": USER, "pad": "x" * 9000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"model": "chat", "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'
    r = httpx.post(url + "/v1/chat/completions", content=chunked())
    assert r.status_code == 413
    r = httpx.get(url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
    with pytest.raises(openai.BadRequestError) as e:  # a base model cannot chat
        client.chat.completions.create(model="base", messages=USER)
    assert error_of(e)["code"] == "not_a_chat_model"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="base", prompt="a" * 2100, max_tokens=10)  # context 2048


def test_api_key(models):
    app = create_app({"chat": models["chat"]}, api_key="s3cret")
    with live_server(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            c.models.list()
        assert e.value.status_code == 401 and error_of(e)["code"] == "invalid_api_key"
        assert httpx.post(url + "/v1/chat/completions", json={}).status_code == 401  # no header at all
        assert httpx.get(url + "/v1/models", headers={"Authorization": "s3cret"}).status_code == 401
        c = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert c.chat.completions.create(model="chat", messages=USER, max_tokens=3).usage.prompt_tokens > 0
        assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/").status_code == 200


def test_turn_decoder_and_stop_strings_never_split_characters(models):
    _, tok = models["chat"]
    dec = TurnDecoder(tok)
    text = "é日本 ok"
    pieces = [p.text for i in text.encode() for p in dec.feed(i)]  # one byte token at a time
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    assert pieces[:3] == ["é", "日", "本"]
    s = StopStrings(("日本", "END"))
    sent = [s.feed(x) for x in ("aé", "日", "x", "E", "N", "日", "本z")]
    assert sent == ["aé", "", "日x", "", "", "EN", ""]
    assert s.hit


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_inbox_gathers_tokens_and_hands_a_rows_end_over_at_once():
    """The hand-over from the batcher's thread to a stream: puts while the stream settles wait for
    its next write, all in one take; an urgent put (a row's end) ends the settling at once."""

    async def main():
        box = Inbox(asyncio.get_running_loop())

        def batcher(delay, items, urgent=False):
            threading.Timer(delay, box.put, (items,), {"urgent": urgent}).start()

        batcher(0.05, ["a"])
        t0 = time.monotonic()
        assert await box.get() == ["a"] and time.monotonic() - t0 < 1  # a waiting get wakes on any put
        for i, tok in enumerate("bcd"):
            batcher(0.02 * (i + 1), [tok])
        t0 = time.monotonic()
        await box.settle(0.3)  # ordinary puts do not end it
        assert time.monotonic() - t0 >= 0.29 and box.take() == ["b", "c", "d"] and box.take() == []
        batcher(0.02, ["e"])
        batcher(0.05, ["end"], urgent=True)
        t0 = time.monotonic()
        await box.settle(5)
        assert time.monotonic() - t0 < 2 and await box.get() == ["e", "end"]

    asyncio.run(main())


def test_load_32_streaming_clients(server):
    """32 concurrent streaming clients x 2 requests each: all complete, no errors, decode steps shared
    (continuous batching), RSS flat."""
    url, app = server
    batcher = app.state.served["chat"].batcher

    async def one(i: int) -> int:
        tokens = 0
        for j in range(2):
            s = await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": f"Hello {i} {j}"}], max_tokens=24,
                temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True})
            usage, finish = None, None
            async for chunk in s:
                usage = chunk.usage or usage
                finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
            assert finish in ("stop", "length") and 0 <= usage.completion_tokens <= 24
            tokens += usage.completion_tokens
        return tokens

    async def everyone() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(32)))

    async def rounds():
        nonlocal client
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        await everyone()  # warm-up round: allocator pools, first batches
        before, steps0, t0 = rss_mb(), batcher.steps, time.monotonic()
        tokens = sum(await everyone())
        return before, batcher.steps - steps0, tokens, time.monotonic() - t0

    client = None
    before, steps, tokens, elapsed = asyncio.run(rounds())
    assert elapsed < 60, f"64 requests took {elapsed:.1f} s"
    assert batcher.max_rows >= 8, "concurrent requests were not batched"
    # alone, every token after a request's first (sampled at its prefill) costs one decode step
    assert steps < (tokens - 64) / 4, f"{steps} decode steps for {tokens} tokens: steps were not shared"
    assert rss_mb() - before < 50, f"RSS grew from {before:.0f} MB to {rss_mb():.0f} MB"
    assert batcher.running == 0 and batcher.waiting == 0


def wait_for(cond, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_disconnect_cancels_the_generation(server):
    url, app = server
    b = app.state.served["base"].batcher
    cancelled = b.cancelled
    body = {"model": "base", "prompt": "the", "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        next(r.iter_lines())  # the first chunk: the row is running
        assert b.running == 1
    # the client hung up after one chunk of 2000: the batcher stops the row
    assert wait_for(lambda: b.cancelled == cancelled + 1 and b.running == 0)
    # a non-streamed request whose client gives up is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json={**body, "stream": False}, timeout=0.5)
    assert wait_for(lambda: b.cancelled == cancelled + 2 and b.running == 0)


def test_full_queue_answers_429(models):
    app = create_app({"base": models["base"]}, limits=Limits(max_batch=1, max_queue=1))
    body = {"model": "base", "prompt": "the", "max_tokens": 2000, "stream": True}
    with live_server(app) as url:
        b = app.state.served["base"].batcher
        holders = []

        def hold():  # a long streamed request that keeps the batch (or the queue) busy
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                holders.append(r.status_code)
                lines = r.iter_lines()  # kept: a dropped line iterator closes the connection
                next(lines)
                stop.wait(30)

        stop = threading.Event()
        threads = [threading.Thread(target=hold, daemon=True) for _ in range(2)]
        threads[0].start()
        assert wait_for(lambda: b.running == 1)
        threads[1].start()
        assert wait_for(lambda: b.waiting == 1)
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model="base", prompt="a", max_tokens=2)
        assert e.value.status_code == 429 and error_of(e)["code"] == "queue_full"
        stop.set()
        for t in threads:
            t.join(30)
        assert holders == [200, 200]


def test_serve_command_refuses_a_bad_checkpoint_in_one_line(capsys, tmp_path):
    from gptforge.cli import main

    assert main(["serve", "--ckpt", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"gptforge: error: --ckpt {tmp_path / 'nope'}: no such directory\n"
    assert main(["serve", "--ckpt", str(tmp_path), "--max-batch", "0"]) == 2
    assert "max-batch" in capsys.readouterr().err


UNDERFLOW = ["1e-46", "5e-324", "1e-320"]  # positive, but 0 in float32


@pytest.mark.parametrize("field", ["temperature", "top_p", "top_k"])
@pytest.mark.parametrize("value", UNDERFLOW)
def test_sampling_values_that_underflow_float32(server, field, value):
    """A temperature below float32's range is greedy and such a top_p keeps the top token only (both
    used to make torch.multinomial raise on nan probabilities); a top_k that is not an integer is a 400."""
    body = {"model": "chat", "messages": USER, "max_tokens": 8, "seed": 1}
    url = server[0] + "/v1/chat/completions"
    greedy = httpx.post(url, json={**body, "temperature": 0}, timeout=60).json()
    sent = {**body, "temperature": 1.0, field: json.loads(value)}
    r = httpx.post(url, json=sent, timeout=60)
    if field == "top_k":
        assert r.status_code == 400 and r.json()["error"]["param"] == "top_k"
        return
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"] == greedy["choices"][0]["message"]


def test_one_bad_request_leaves_the_other_streams_alone(server, models, monkeypatch):
    """Requests with a temperature or top_p that underflows float32 run beside ordinary streams: all
    finish normally. A row whose sampling fails (injected here: the sampler raises for one row) ends
    with a server error alone; the rows decoding beside it finish with their own replies."""
    import gptforge.serve.batcher as batcher_module

    url = server[0]
    model, tok = models["chat"]
    want = "".join(p.text for p in respond(model, tok, USER, 30, temperature=0, top_k=None))
    real = batcher_module.sample_next

    def fails_at_top_p_0_5(logits, temperature, top_k, top_p, gen):  # the fault: one row's sampler raises
        if top_p == 0.5:
            raise RuntimeError("injected sampler failure")
        return real(logits, temperature, top_k, top_p, gen)

    monkeypatch.setattr(batcher_module, "sample_next", fails_at_top_p_0_5)

    def stream(extra):
        body = {"model": "chat", "messages": USER, "max_tokens": 30, "stream": True, "temperature": 0,
                **extra}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            events = [json.loads(x.removeprefix("data: ")) for x in r.iter_lines()
                      if x.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c.get("choices"))
        error = next((c["error"]["type"] for c in events if "error" in c), None)
        return text, error

    extras = [{}, {"temperature": 1e-46}, {"top_p": 5e-324, "temperature": 1.0}, {},
              {"top_p": 0.5, "temperature": 1.0}, {"temperature": 1e-320}, {}]
    with ThreadPoolExecutor(len(extras)) as pool:
        got = list(pool.map(stream, extras))
    assert got[4] == ("", "server_error")
    assert [g for i, g in enumerate(got) if i != 4] == [(want, None)] * 6
