"""BOS-aligned best-fit packing (``sampling = "packed"``): rows start at document starts, hold no
padding, and the cropped count is the one the rows show; documents as the shards separate them;
a packed run resumes exactly and logs its cropped share."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import mfu_cache, shakespeare_char_shards  # noqa: F401 (mfu_cache: a fixture)

from gptforge.data.corpus import open_corpus
from gptforge.data.shards import document_spans, open_shards, prepare, resolve_tokenizer
from gptforge.errors import UserError
from gptforge.train import make_config, resume_config, train
from gptforge.train.batches import PACK_BUFFER, PackedBatches

EOT = 0


def synthetic(lengths: list[int]) -> np.ndarray:
    """A split of documents of ``lengths`` text tokens separated by EOT, token j of document k
    being (k + 1) * 10_000 + j: any run of a row names its document and its place in it."""
    parts = []
    for k, n in enumerate(lengths):
        if k:
            parts.append([EOT])
        parts.append((k + 1) * 10_000 + np.arange(n))
    return np.concatenate(parts).astype(np.uint32)


def segments(row: np.ndarray) -> list[tuple[int, int]]:
    """``(document k, text tokens)`` of each BOS-led run of a row; asserts that each run is the
    start of its document, in order (so nothing in the row is padding or out of place)."""
    assert row[0] == EOT, "a row must start with BOS"
    out = []
    for run in np.split(row, np.flatnonzero(row == EOT)[1:]):
        text = run[1:]
        k = int(text[0]) // 10_000 - 1 if len(text) else None
        if k is not None:
            assert np.array_equal(text, (k + 1) * 10_000 + np.arange(len(text))), "not a document's start"
        out.append((k, len(text)))
    return out


@pytest.mark.parametrize("T", [16, 63])
def test_rows_start_at_documents_hold_no_padding_and_count_the_crop(T):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 3 * T, size=300).tolist()
    lengths[5] = 0  # an empty document (two EOTs in a row) is never placed
    tokens = synthetic(lengths)
    packed = PackedBatches(tokens, B=6, T=T, seed=3, eot=EOT)
    total_cropped = total_taken = 0
    for index in range(20):
        rows, cropped, taken = packed.rows(index)
        assert rows.shape == (6, T + 1) and rows.dtype == np.int64
        want_cropped = want_taken = lone = 0
        for row in rows:
            segs = segments(row)
            for i, (k, n) in enumerate(segs):
                if k is None:  # a document cropped to its BOS (room 1 left): which one, the row can't say
                    assert i == len(segs) - 1
                    lone += 1
                    continue
                assert k != 5
                full = lengths[k]
                assert n <= full
                if n < full:  # only the run that fills the row may be cut short
                    assert i == len(segs) - 1
                want_cropped += full - n
                want_taken += full + 1  # its BOS counts
        assert taken - cropped == 6 * (T + 1)  # every token placed is a document's: no padding
        # the identified runs exactly; each lone BOS was placed, the rest of its document cropped
        assert (taken - want_taken) - (cropped - want_cropped) == lone
        assert cropped - want_cropped >= lone
        total_cropped, total_taken = total_cropped + cropped, total_taken + taken
    assert 0 < total_cropped < total_taken


def test_best_fit_places_the_largest_document_that_fits():
    # documents of 8 and 12 tokens (BOS included), rows of 20: an opener of 8 leaves room 12, which
    # the largest fit fills exactly (the smallest fit would place another 8 and crop); one of 12
    # leaves room 8. So the rows tile without a crop.
    lengths = [7, 11] * 100
    packed = PackedBatches(synthetic(lengths), B=8, T=19, seed=0, eot=EOT)
    for index in range(10):
        rows, cropped, taken = packed.rows(index)
        assert cropped == 0 and taken == 8 * 20
        assert all(sorted(n for _, n in segments(row)) == [7, 11] for row in rows)


def test_batches_are_a_pure_function_of_seed_and_index():
    tokens = synthetic(list(range(1, 200)))
    a, b = PackedBatches(tokens, 4, 32, 7, EOT), PackedBatches(tokens, 4, 32, 7, EOT)
    x, y = a.get(5)
    assert x.shape == y.shape == (4, 32) and (x[:, 1:] == y[:, :-1]).all()
    assert (x == b.get(5)[0]).all() and (b.get(5)[1] == y).all()
    assert not (a.get(6)[0] == x).all()
    assert not (PackedBatches(tokens, 4, 32, 8, EOT).get(5)[0] == x).all()
    assert PACK_BUFFER >= 2


def test_document_spans_are_the_corpus_documents(tmp_path):
    docs = [f"document {i}: " + "abc " * (i % 7) for i in range(40)] + ["", "last one"]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    tok = resolve_tokenizer("char", str(corpus))
    prepare(str(corpus), tok, tmp_path / "sh", workers=1, progress=False)
    train_docs = [p.text for p in open_corpus(str(corpus)).pieces() if p.split == "train"]
    tokens = open_shards(tmp_path / "sh").tokens("train")
    spans = document_spans(tokens, tok.eot_id, chunk=16)  # many chunks: a split larger than RAM
    assert [tok.decode(tokens[a:b].tolist()) for a, b in spans] == train_docs
    assert (tokens[spans[1:, 0] - 1] == tok.eot_id).all()


@pytest.fixture(scope="module")
def doc_shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("docs")
    from gptforge.data import shakespeare

    text = shakespeare.corpus_text()[:120_000]
    corpus = d / "speeches.jsonl"  # one document per speech: tens to hundreds of characters
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in text.split("\n\n") if s.strip()))
    prepare(str(corpus), resolve_tokenizer("char", str(corpus)), d / "sh", workers=1, progress=False)
    return d / "sh"


pytestmark = pytest.mark.usefixtures("mfu_cache")


def _cfg(data, out, **kw):
    return make_config({"data": str(data), "out": str(out), "arch": "gpt", "depth": 1, "block_size": 64,
                        "batch_size": 4, "eval_tokens": 512, "eval_interval": 3, "warmup_steps": 2,
                        "threads": 1, "progress": "none", "lr": 1e-2, "sampling": "packed",
                        "max_steps": 8, "decay_steps": 8, "model": {"n_embd": 32, "n_head": 2}, **kw})


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_packed_run_resumes_exactly_and_logs_the_cropped_share(doc_shards, tmp_path, capsys):
    full = train(_cfg(doc_shards, tmp_path / "full"))
    assert "packed rows:" in capsys.readouterr().err
    train(_cfg(doc_shards, tmp_path / "part", max_steps=4))
    resumed = train(resume_config(tmp_path / "part", {"max_steps": 8}), resume=True)
    losses = {r["step"]: r["train_loss"] for r in _metrics(tmp_path / "full") if "train_loss" in r}
    assert {r["step"]: r["train_loss"] for r in _metrics(tmp_path / "part") if "train_loss" in r} == losses
    assert resumed["val_loss"] == full["val_loss"] and len(losses) == 8
    shares = [r["train_cropped"] for r in _metrics(tmp_path / "full") if "train_loss" in r]
    assert all(0 <= s < 1 for s in shares) and len(set(shares)) > 1


def test_one_document_is_refused_in_one_line(tmp_path):
    data = shakespeare_char_shards(tmp_path, 20_000)
    with pytest.raises(UserError, match="several documents") as e:
        train(_cfg(data, tmp_path / "run"))
    assert "\n" not in str(e.value)
