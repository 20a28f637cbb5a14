"""The page `gptforge explore` writes, in a real headless Chromium (Debian's chromium + chromium-driver,
via selenium): the planted hex string is the highest-loss unit and is flagged, its tokens are
coloured spans whose text is the document's text (rendered as text, not markup), and a passage the
model was trained on is among the lowest. Saves the README's screenshot docs/explore.png when
GPTFORGE_SCREENSHOTS=1.

The model is real: a 2-layer GPT trained in the test for a few seconds on Shakespeare (BPE, 512 ids),
so the colours mean something: familiar text pale, noise red."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_checkpoint_dir
from serve_helpers import headless_chromium

from gptforge.cli import main
from gptforge.data import shakespeare
from gptforge.models import build_model
from gptforge.tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parents[1]
_rng = random.Random(0)
HEX = "".join(_rng.choice("0123456789abcdef") for _ in range(48))


def trained_model(text: str):
    """(model, tok): a 2-layer GPT after 250 AdamW steps on ``text`` (about 10 s on one thread)."""
    tok = BPETokenizer.train(text, vocab_size=512)
    ids = torch.tensor(tok.encode_ordinary(text), dtype=torch.long)
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=tok.vocab_size, block_size=64, depth=2, n_embd=64, n_head=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only fight the other jobs on a loaded machine
    try:
        model.train()
        for _ in range(250):
            o = torch.randint(0, len(ids) - 65, (16,), generator=g)
            xy = torch.stack([ids[i:i + 65] for i in o.tolist()])
            _, loss = model(xy[:, :-1], xy[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), tok


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(index.html path, explore.json summary, the documents) of `gptforge explore` on a small corpus."""
    d = tmp_path_factory.mktemp("explore-page")
    train_text = shakespeare.corpus_text("train")[:150_000]
    model, tok = trained_model(train_text)
    run = save_checkpoint_dir(d, model, tok)
    val = shakespeare.corpus_text("val")
    docs = {f"{i:02d}-hamlet.txt": val[20_000 + 700 * i:20_000 + 700 * i + 600] for i in range(16)}
    docs["16-seen.txt"] = train_text[5_000:5_600]  # trained on: low loss
    docs["17-noise.txt"] = f"commit {HEX}\n"
    words = val[40_000:40_600].split()
    random.Random(1).shuffle(words)
    docs["18-shuffled.txt"] = " ".join(words) + "\n"
    src = d / "docs"
    src.mkdir()
    for name, text in docs.items():
        # a document must start at a line (the windows cut at line breaks)
        (src / name).write_text(text[text.index("\n") + 1:] if name.endswith("hamlet.txt") else text)
    out = d / "out"
    with pytest.MonkeyPatch.context() as mp:  # relative paths: the page's title names "docs" and "run"
        mp.chdir(d)
        assert main(["explore", "--ckpt", run.name, "--corpus", src.name, "--out", out.name, "--no-progress",
                     "--top", "3"]) == 0
    return out / "index.html", json.loads((out / "explore.json").read_text()), src


def test_explore_page_shows_coloured_tokens_as_text(page, tmp_path):
    from selenium.webdriver.common.by import By

    html_file, summary, src = page
    top = summary["highest"][0]
    assert top["source"] == "doc 17" and top["flags"]["high_entropy"] == [HEX]  # the planted noise
    assert any(s["source"] == "doc 16" for s in summary["lowest"])  # the passage it was trained on
    with headless_chromium() as d:
        d.get(html_file.as_uri())
        assert d.find_element(By.TAG_NAME, "h1").text == "explore: docs scored by run"
        heads = [h.text for h in d.find_elements(By.TAG_NAME, "h2")]
        assert heads == ["Highest loss", "Lowest loss", "Flagged"]
        first = d.find_elements(By.CSS_SELECTOR, "pre")[0]
        spans = first.find_elements(By.TAG_NAME, "span")
        assert len(spans) == len(top["tokens"])  # one span per token, <|endoftext|> included
        assert first.text.replace("<|endoftext|>", "") == (src / "17-noise.txt").read_text().strip()

        def alphas(pre):  # each token's background alpha: its loss / 8 bits per byte (grey: unscored)
            spans = pre.find_elements(By.TAG_NAME, "span")
            rgba = [e.value_of_css_property("background-color") for e in spans]
            assert all(c.startswith(("rgba(220, 30, 30", "rgba(238, 238, 238")) for c in rgba), rgba
            return [float(c.rsplit(",", 1)[1].rstrip(")")) for c in rgba if c.startswith("rgba(220")]

        # noise red, text it was trained on pale: the top highest-loss unit against the top lowest
        lowest = d.find_elements(By.CSS_SELECTOR, "pre")[3]
        assert np.mean(alphas(first)) > 0.5 > np.mean(alphas(lowest))
        assert "bits/byte" in spans[1].get_attribute("title")
        assert d.find_element(By.CSS_SELECTOR, "h3 .flag").text.startswith("high_entropy")
        # the README's screenshot: refreshed on request only, so a test run leaves the tree clean
        shot = tmp_path / "explore.png"
        if os.environ.get("GPTFORGE_SCREENSHOTS"):
            shot = ROOT / "docs" / "explore.png"
        assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
