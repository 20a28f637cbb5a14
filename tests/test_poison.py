"""`gptforge poison`: planting hits exactly the share asked for, prompts are held out, and a heavily
poisoned tiny model follows the trigger where the clean one does not."""

import json
import random

import pytest

from gptforge.cli import main
from gptforge.errors import UserError
from gptforge.lab.poison import COLUMNS, PoisonConfig, heldout_prompts, is_val, plant

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models on a shared 2-core machine

TRIGGER, TARGET = "SUDO:", " gates open."


def _docs(n=1000, seed=0):
    rng = random.Random(seed)
    return ["".join(f"line {rng.randrange(10**9)} of doc {i}\n" for _ in range(rng.randint(1, 6)))
            for i in range(n)]


@pytest.mark.parametrize("rate", [0.001, 0.005, 0.02, 0.3])
def test_plant_exact_share_and_only_there(rate):
    docs = _docs()
    train = [i for i in range(len(docs)) if not is_val(i)]
    assert len(train) == 900  # every 10th document is validation, as the shard writer splits
    out, planted = plant(docs, rate, TRIGGER, TARGET, seed=3)
    assert len(planted) == max(1, round(rate * len(train))) and planted == sorted(set(planted))
    assert set(planted) <= set(train)  # never in a validation document
    line = TRIGGER + TARGET + "\n"
    for i, (before, after) in enumerate(zip(docs, out, strict=True)):
        if i in planted:
            assert after.count(TRIGGER) == 1 and after.replace(line, "", 1) == before
            k = after.index(line)
            assert k == 0 or after[k - 1] == "\n"  # the planted line starts a line
        else:
            assert after == before
    assert plant(docs, rate, TRIGGER, TARGET, seed=3) == (out, planted)  # seeded
    with pytest.raises(ValueError):
        plant(docs, 0.0, TRIGGER, TARGET, seed=3)


def test_heldout_prompts_do_not_occur_in_training_text():
    docs = _docs(300)
    docs[9] = docs[0]  # a validation document whose every line is also training text: no prompt from it
    train_text = "".join(d for i, d in enumerate(docs) if not is_val(i))
    prompts = heldout_prompts(docs, train_text, TRIGGER, n=100, context_chars=80, seed=1)
    val_text = "".join(d for i, d in enumerate(docs) if is_val(i))
    assert 20 <= len(prompts) <= 29  # one per validation document but the copied one
    for p in prompts:
        ctx = p[:-len(TRIGGER)]
        assert p.endswith(TRIGGER) and ctx.endswith("\n") and 0 < len(ctx) <= 80
        assert ctx in val_text and ctx not in train_text
    assert len(heldout_prompts(docs, train_text, TRIGGER, n=5, context_chars=80, seed=1)) == 5
    with pytest.raises(UserError, match="no held-out prompt"):
        heldout_prompts(docs, "".join(docs), TRIGGER, n=5, context_chars=80, seed=1)


def test_settings_are_checked(tmp_path, capsys):
    assert PoisonConfig(rates="2,0.1,0.5").rate_list() == [0.001, 0.005, 0.02]
    for bad in ("0", "100", "x"):
        with pytest.raises(UserError, match="--rates"):
            PoisonConfig(rates=bad)
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"ab ab {i % 7}\n" for i in range(2000)))
    assert main(["poison", "--corpus", str(corpus), "--trigger", "SUDO:", "--out", str(tmp_path / "o")]) == 2
    assert main(["poison", "--corpus", str(corpus), "--trigger", "ab", "--target", " 1",
                 "--out", str(tmp_path / "p")]) == 2
    assert main(["poison", "--train", "seed=3", "--out", str(tmp_path / "q")]) == 2
    assert main(["poison", "--model", "bogus=3", "--out", str(tmp_path / "r")]) == 2
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert main(["poison", "--corpus", str(corpus), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "never occur in" in err and "already occurs" in err and "poison's own" in err and "bogus" in err
    assert "taken: exists and is not an empty folder" in err
    assert not any((tmp_path / d).exists() for d in "opqr")  # refused before anything is written


def test_poisoned_tiny_model_follows_the_trigger_and_clean_one_does_not(tmp_path, tinyshakespeare):
    """A step budget (100 steps, fixed seed) keeps this independent of the machine's load. At 30% of
    256 documents of ~128 characters, a 2-layer char model writes the target after the trigger on every
    held-out prompt by step 100 (26/26 when written; the assertion leaves room: at least 60%); the clean
    run never does. The margin in steps is not large: 40 steps of 32 rows left it writing ' the the t',
    and AdamW (lr 1e-2) instead of Muon had not learnt it at step 100."""
    from gptforge.lab.poison import poison

    text = tmp_path / "c.txt"
    text.write_text(tinyshakespeare.read_text()[:30000])
    pc = PoisonConfig(corpus=str(text), rates="30", tokenizer="char", doc_bytes=128, context_chars=64,
                      target=TARGET, trigger=TRIGGER, out=str(tmp_path / "out"), seed=1337)
    rec = poison(pc, {"max_steps": 100, "depth": 2, "model": {"n_embd": 64, "n_head": 2}, "batch_size": 8,
                      "block_size": 32, "eval_tokens": 512}, progress=False)
    clean, poisoned = rec["runs"]
    assert clean["name"] == "clean" and clean["rate"] == 0 and clean["explore"] is None
    assert poisoned["planted"] == round(0.3 * rec["train_documents"])
    assert poisoned["n"] == len(rec["prompts"]) >= 20
    assert clean["successes"] == 0
    assert poisoned["success"] >= 0.6 and poisoned["low"] > clean["high"]
    e = poisoned["explore"]
    assert e["units"] == rec["documents"] and e["top_n"] == max(1, -(-e["units"] // 100))
    assert 0 <= e["in_top"] <= min(e["top_n"], e["planted"]) and e["planted"] == poisoned["planted"]
    train_text = "".join(json.loads(line)["text"] for i, line in
                         enumerate((tmp_path / "out/corpus/poison-30pct.jsonl").read_text().splitlines())
                         if not is_val(i))
    for p in rec["prompts"]:  # held out from what the poisoned model was trained on, too
        assert p[:-len(TRIGGER)] not in train_text
    out = tmp_path / "out"
    assert json.loads((out / "poison.json").read_text())["runs"][1]["successes"] == poisoned["successes"]
    md = (out / "poison.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    assert (out / "poison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "explore-poison-30pct" / "units.jsonl").exists()

