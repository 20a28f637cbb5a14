"""A live `gptforge serve` app for the tests: uvicorn on 127.0.0.1 at a free port, in a thread of the
test process (so a test can read the batchers' counters), and the tiny models it serves."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time

import pytest
import torch
from helpers import CHAT_TEXT, randomize

from gptforge.models import build_model
from gptforge.tokenizer import BPETokenizer, CharTokenizer


def tiny_chat_model(block_size: int = 256, seed: int = 0):
    """(random 1-layer GPT, 320-id BPE with the chat tokens)."""
    tok = BPETokenizer.train(CHAT_TEXT, vocab_size=320)
    torch.manual_seed(seed)
    model = build_model("gpt", vocab_size=tok.vocab_size, block_size=block_size, depth=1, n_embd=32, n_head=1)
    return randomize(model, seed), tok


def tiny_base_model(block_size: int = 512):
    """(random 1-layer GPT, char tokenizer with no special tokens): a completion never stops before
    max_tokens, since there is no <|endoftext|> to sample."""
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,", specials=())
    torch.manual_seed(1)
    model = build_model("gpt", vocab_size=tok.vocab_size, block_size=block_size, depth=1, n_embd=32, n_head=1)
    return randomize(model, 1), tok


@contextlib.contextmanager
def live_server(app):
    """Yield the base URL of ``app`` served by uvicorn in a daemon thread; stop it afterwards."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# Debian's chromium and chromium-driver (.ci/run installs them when missing)
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")


@contextlib.contextmanager
def headless_chromium():
    """A selenium driver of a headless Chromium, quit afterwards; skips the test with the reason
    when chromium, chromedriver or selenium is missing."""
    from pathlib import Path

    if not (Path(CHROMIUM).exists() and DRIVER):
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,760"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float = 30):
    """Poll ``condition(driver)`` every 50 ms until it is truthy (its value) or ``timeout`` seconds pass."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
