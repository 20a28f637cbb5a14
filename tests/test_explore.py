"""`gptforge explore`: planted duplicates, near duplicates, hex and base64 strings and foreign
characters are flagged; units are sorted by loss both ways; per-unit bits per byte agree with
gptforge.eval.bpb; the page is static and escaped."""

import json

import numpy as np
import pytest
import torch
from helpers import randomize, save_checkpoint_dir

from gptforge.cli import main
from gptforge.eval.bpb import bpb_tokens
from gptforge.explore import explore as ex
from gptforge.models import build_model
from gptforge.tokenizer import BPETokenizer

WORDS = ("time love king night lord heart death life hand eyes world father blood heaven honour day "
         "sweet fair true good great poor old young dear noble gentle speak come go make know").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A directory of .txt documents of random words, with the planted problems."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("explore")
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=60)) + "\n" for _ in range(30)]
    near = docs[3].split()
    near[10] = "noble" if near[10] != "noble" else "gentle"
    docs += [docs[5],                                                   # 30: exact duplicate of 5
             " ".join(near) + "\n",                                      # 31: near duplicate of 3
             docs[7][:100] + " commit 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b ok\n",      # 32: hex
             docs[8][:100] + " key: QmFzZTY0IGlzIG5vdCBlbmNyeXB0aW9uLCBqdXN0IGVuY29kaW5n\n",  # 33: b64
             docs[9][:100] + " Привет мир <script>alert(1)</script>\n"]  # 34: foreign chars, markup
    src = d / "docs"
    src.mkdir()
    for i, t in enumerate(docs):
        (src / f"{i:03d}.txt").write_text(t, encoding="utf-8")
    tok = BPETokenizer.train("".join(docs[:30]), vocab_size=300)
    model = randomize(build_model("gpt", vocab_size=tok.vocab_size, block_size=32, preset="modern", depth=1,
                                  n_embd=32, n_head=2))
    run = save_checkpoint_dir(d, model, tok)
    return d, src, tok, model, run


def test_flags_and_sorting(corpus, tmp_path):
    d, src, tok, model, _ = corpus
    usual = ex.usual_characters(p.read_text(encoding="utf-8") for p in sorted(src.iterdir()))
    units = list(ex.corpus_units(str(src), tok))
    assert len(units) == 35 and units[30].source == "doc 30"
    summary = ex.explore(model, tok, ex.corpus_units(str(src), tok), tmp_path / "out", top=5,
                         usual_chars=usual)
    recs = [json.loads(x) for x in (tmp_path / "out" / "units.jsonl").read_text().splitlines()]
    flags = {r["index"]: r["flags"] for r in recs}
    assert flags[30] == {"duplicate": 5}
    assert flags[31] == {"near_duplicate": 3}
    assert flags[32]["high_entropy"] == ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"]
    assert flags[33]["high_entropy"] == ["QmFzZTY0IGlzIG5vdCBlbmNyeXB0aW9uLCBqdXN0IGVuY29kaW5n"]
    assert set(flags[34]["unusual_chars"]) >= set("Привет")
    assert all(not flags[i] for i in range(30))  # nothing else
    # the hex and base64 strings bring characters of their own (digits, capitals) too
    assert summary["flags"] == {"duplicate": 1, "near_duplicate": 1, "high_entropy": 2, "unusual_chars": 3}
    bpbs = [r["bpb"] for r in recs]
    assert bpbs == sorted(bpbs, reverse=True)  # highest loss first
    assert [s["bpb"] for s in summary["highest"]] == bpbs[:5]
    assert [s["bpb"] for s in summary["lowest"]] == bpbs[::-1][:5]
    # the scorer agrees with gptforge.eval.bpb on a unit (windows, special-token convention)
    u = units[32]
    assert recs[[r["index"] for r in recs].index(32)]["bpb"] == pytest.approx(
        bpb_tokens(model, np.asarray(u.ids), tok.token_bytes())["bpb"], rel=1e-5)
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;" in page and "http" not in page  # escaped, nothing fetched
    assert "Highest loss" in page and "Lowest loss" in page


def test_long_document_windows(corpus):
    _, _, tok, _, _ = corpus
    text = "".join(f"line {i} " + "x" * 50 + "\n" for i in range(400))  # ~23 KB, one document
    units = list(ex.corpus_units(_write(text), tok, window_bytes=1024, max_doc_bytes=4096))
    windows = [u for u in units if "window" in u.source]  # the train part (the val tenth fits whole)
    assert len(windows) > 18 and all(900 <= len(u.text.encode()) <= 1024 for u in windows[:-1])
    assert units[-1].source == "doc 1" and len(units[-1].text) < 4096
    assert "".join(u.text for u in units) == text  # windows tile the document


def _write(text):
    import tempfile
    from pathlib import Path

    p = Path(tempfile.mkdtemp()) / "one.txt"
    p.write_text(text)
    return str(p)


def test_cli(corpus, tmp_path, capsys):
    d, src, tok, _, run = corpus
    assert main(["explore", "--ckpt", str(run), "--corpus", str(src), "--out", str(tmp_path / "o"),
                 "--no-progress", "--top", "3"]) == 0
    err = capsys.readouterr().err
    assert "35 units" in err and "1 duplicates" in err and "2 with high-entropy" in err
    s = json.loads((tmp_path / "o" / "explore.json").read_text())
    assert len(s["highest"]) == 3 and all(len(x["tokens"]) > 10 for x in s["highest"])
