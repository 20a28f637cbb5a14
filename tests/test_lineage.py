"""`gptforge lineage`: the models line up as they must on a corpus built to decide it."""

import json
import random

from gptforge.cli import main
from gptforge.lab.lineage import COLUMNS, LINEAGE, SAMPLE_CHARS


def _corpus(path, lines=20000, seed=0):
    """Lines "a b c\\n" of letters from 16: a and b uniform, c fixed by a (two tokens back). With a
    char tokenizer the best bigram pays 4 bits for a, b and c each: 12 bits per 4 bytes, 3.0 bits per
    byte; a model that sees two tokens back pays nothing for c: 2.0."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnop"
    shift = {c: letters[(i + 5) % 16] for i, c in enumerate(letters)}
    text = "".join(a + b + shift[a] + "\n" for a, b in ((rng.choice(letters), rng.choice(letters))
                                                          for _ in range(lines)))
    path.write_text(text)


def test_lineage_orders_models_and_writes_outputs(tmp_path, capsys):
    corpus, out = tmp_path / "two_back.txt", tmp_path / "lineage"
    _corpus(corpus)
    # a step budget keeps the result independent of the machine's load
    assert main(["lineage", "--corpus", str(corpus), "--tokenizer", "char", "--prompt", "ab",
                 "--out", str(out), "--train", "max_steps=100", "--train", "block_size=32",
                 "--train", "batch_size=16"]) == 0
    rec = json.loads((out / "lineage.json").read_text())
    bpb = {m["name"]: m["val_bpb"] for m in rec["models"]}
    assert [m["name"] for m in rec["models"]] == list(LINEAGE)
    assert bpb["bigram"] > 2.9  # it cannot see two tokens back: 3.0 at best
    for name in ("mlp", "lstm", "gpt"):
        assert bpb[name] < 2.3 < bpb["bigram"] - 0.5, (name, bpb)
    for m in rec["models"]:
        assert m["steps"] == 100 and m["tokens"] == 100 * 32 * 16
        assert len(m["sample"]) == SAMPLE_CHARS and set(m["sample"]) <= set("abcdefghijklmnop\n")
        assert len(m["curve"]) >= 3 and m["curve"][-1][1] == m["val_bpb"]
    md = (out / "lineage.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + len(LINEAGE)
    assert (out / "lineage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "val bpb" in capsys.readouterr().err  # the table is printed too


def test_lineage_refuses_bad_settings(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert main(["lineage", "--out", str(tmp_path / "taken")]) == 2
    assert main(["lineage", "--out", str(tmp_path / "new"), "--train", "arch=gpt"]) == 2
    assert main(["lineage", "--match", "steps"]) == 2
    err = capsys.readouterr().err
    assert "not an empty folder" in err and "the lineage's own" in err and "steps" in err
    assert not (tmp_path / "new").exists()
