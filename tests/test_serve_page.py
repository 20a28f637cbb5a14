"""The chat page at / in a real headless Chromium (Debian's chromium + chromium-driver, via selenium):
send a message, watch the reply stream in, regenerate it, see a tool call shown distinctly, and see
an XSS payload in the model's reply shown as text. Saves the README's screenshot docs/serve.png
when GPTFORGE_SCREENSHOTS=1.

The model is real, not a stub: a 2-layer GPT trained in the test (about 300 AdamW steps, a few
seconds) until it has memorised two conversations, so its greedy reply to "Show me some HTML" is
exactly ``PAYLOAD`` and to "What is 12*34?" a calculator call (the server runs the tool)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from helpers import CHAT_TEXT
from serve_helpers import CHROMIUM, DRIVER, headless_chromium, live_server, wait

from gptforge.chat.assistant import respond
from gptforge.chat.render import render
from gptforge.models import build_model
from gptforge.serve.app import create_app
from gptforge.tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = '<img src=x onerror="window.xss=1"><script>window.xss=2</script> <b>not bold</b>'
CONVERSATIONS = [
    [{"role": "user", "content": "Show me some HTML"}, {"role": "assistant", "content": PAYLOAD}],
    [{"role": "user", "content": "What is 12*34?"},
     {"role": "assistant", "content": [{"type": "tool_call", "text": "12*34"},
                                       {"type": "tool_output", "text": "408"},
                                       {"type": "text", "text": "12 times 34 is 408."}]}],
]

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and DRIVER),
                                reason="no chromium/chromedriver (apt-get install chromium chromium-driver)")


def memorising_model():
    """(model, tok): a tiny GPT trained on CONVERSATIONS until greedy decoding reproduces them."""
    tok = BPETokenizer.train(CHAT_TEXT + PAYLOAD + " What is 12*34? 12 times 34 is 408.", vocab_size=320)
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=tok.vocab_size, block_size=128, depth=2, n_embd=64, n_head=1)
    rows = [render(c, tok) for c in CONVERSATIONS]
    T = max(len(ids) for ids, _ in rows)
    x = torch.zeros((len(rows), T - 1), dtype=torch.long)
    y = torch.full((len(rows), T - 1), -1, dtype=torch.long)  # -1: no loss (user turns, padding)
    for i, (ids, mask) in enumerate(rows):
        x[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        y[i, :len(ids) - 1] = torch.tensor([t if m else -1 for t, m in zip(ids[1:], mask[1:], strict=True)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only fight the other jobs on a loaded machine
    try:
        for _ in range(400):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if loss.item() < 1e-3:
                break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for convo in CONVERSATIONS:  # the premise of the test: greedy output is the memorised reply
        pieces = list(respond(model, tok, convo[:1], 80, temperature=0, top_k=None))
        text = "".join(p.text for p in pieces if p.kind == "text")
        want = convo[1]["content"]
        assert text == (want if isinstance(want, str) else want[-1]["text"]), (loss.item(), text)
    return model, tok


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as driver:
        yield driver


def test_chat_page_streams_regenerates_and_shows_html_as_text(browser, tmp_path):
    from selenium.webdriver.common.by import By

    app = create_app({"memorised": memorising_model()})
    with live_server(app) as url:
        d = browser
        d.get(url + "/")
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        d.find_element(By.ID, "temperature").clear()
        d.find_element(By.ID, "temperature").send_keys("0")
        # count the changes to the reply as it arrives: a streamed reply changes many times
        d.execute_script("""window.changes = 0;
            new MutationObserver(() => window.changes++).observe(document.getElementById('messages'),
                {childList: true, subtree: true, characterData: true});""")

        def ask(text):
            d.find_element(By.ID, "input").send_keys(text)
            d.find_element(By.ID, "send").click()
            wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
                 and d.find_elements(By.CSS_SELECTOR, ".msg.assistant"))

        def replies():
            return [e.text for e in d.find_elements(By.CSS_SELECTOR, ".msg.assistant .content")]

        ask("Show me some HTML")
        assert replies() == [PAYLOAD]
        assert d.execute_script("return window.changes") > 5  # streamed piece by piece, not at once
        assert not d.find_elements(By.CSS_SELECTOR, "#messages img, #messages script, #messages b")
        assert d.execute_script("return window.xss") is None

        d.find_element(By.ID, "regenerate").click()
        wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
             and replies())
        assert replies() == [PAYLOAD] and len(d.find_elements(By.CSS_SELECTOR, ".msg")) == 2

        ask("What is 12*34?")
        wait(d, lambda d: len(replies()) == 2)
        call = d.find_element(By.CSS_SELECTOR, ".msg.assistant .tool.tool_call")
        out = d.find_element(By.CSS_SELECTOR, ".msg.assistant .tool.tool_output")
        assert (call.text, out.text) == ("calculator: 12*34", "= 408")
        assert replies()[1].endswith("12 times 34 is 408.")
        assert d.execute_script("return window.xss") is None
        # the README's screenshot: refreshed on request only, so a test run leaves the tree clean
        shot = tmp_path / "serve.png"
        if os.environ.get("GPTFORGE_SCREENSHOTS"):
            shot = ROOT / "docs" / "serve.png"
        shot.parent.mkdir(exist_ok=True)
        assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

        # edit-and-resend: the first question, edited, drops everything after it
        d.find_element(By.CSS_SELECTOR, ".msg.user .edit").click()
        assert d.find_element(By.ID, "input").get_attribute("value") == "Show me some HTML"
        assert not d.find_elements(By.CSS_SELECTOR, ".msg")
        d.find_element(By.ID, "send").click()
        time.sleep(0.1)
        wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
             and replies())
        assert replies() == [PAYLOAD]
