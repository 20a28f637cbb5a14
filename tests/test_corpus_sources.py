"""Corpus sources beyond text files: Parquet shards in the FineWeb-Edu layout (issue 31.1), globs
through symlink loops and hard links (27.8), and FIFOs (27.14)."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptforge.cli import main
from gptforge.data import corpus as corpus_mod
from gptforge.data.corpus import open_corpus
from gptforge.data.shards import open_shards
from gptforge.errors import UserError


def fineweb_edu_shard(path, docs: list[str | None], first_id: int = 0, row_group_size: int = 4):
    """A Parquet file with FineWeb-Edu's columns (sample/10BT/*.parquet), in row groups of
    ``row_group_size`` rows."""
    n = len(docs)
    table = pa.table({
        "text": pa.array(docs, pa.string()),
        "id": [f"<urn:uuid:{first_id + i:08d}>" for i in range(n)],
        "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{first_id + i}" for i in range(n)],
        "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2024-10/x.warc.gz"] * n,
        "language": ["en"] * n,
        "language_score": pa.array([0.95] * n, pa.float64()),
        "token_count": pa.array([len((d or "").split()) for d in docs], pa.int64()),
        "score": pa.array([3.1] * n, pa.float64()),
        "int_score": pa.array([3] * n, pa.int64()),
    })
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def doc(i: int) -> str:
    return f"Document {i}: photosynthesis turns light into sugar. Ünïcode ✓ {i * 'x'}\n"


@pytest.fixture
def shards_dir(tmp_path):
    d = tmp_path / "fineweb"
    d.mkdir()
    fineweb_edu_shard(d / "000_00000.parquet", [doc(i) for i in range(13)])
    fineweb_edu_shard(d / "000_00001.parquet", [doc(i) for i in range(13, 25)], first_id=13)
    return d


def test_parquet_shards_stream_one_document_per_row_split_as_other_corpora(shards_dir, monkeypatch):
    monkeypatch.setattr(corpus_mod, "PARQUET_BATCH_ROWS", 3)  # batches smaller than a row group
    want = [doc(i) for i in range(25)]
    for spec in (f"{shards_dir}/*.parquet", str(shards_dir)):
        c = open_corpus(spec)
        ps = list(c.pieces(0.1))
        assert [p.text for p in ps] == want and all(p.doc_start for p in ps)
        # every 10th document is validation, counted across files, as for .txt files and JSONL lines
        assert [i for i, p in enumerate(ps) if p.split == "val"] == [9, 19]
        assert c.bytes_read == sum(len(t.encode()) for t in want)
    # pyarrow's own reading of the files is the reference
    ref = [t for f in sorted(shards_dir.glob("*.parquet")) for t in pq.read_table(f)["text"].to_pylist()]
    assert ref == want
    total = open_corpus(str(shards_dir)).total_bytes()  # the text column's size, for progress bars
    assert sum(len(t.encode()) for t in want) <= total < 2 * sum(len(t.encode()) for t in want)


def test_prepare_parquet_with_the_cli_writes_both_splits(shards_dir, tmp_path):
    out = tmp_path / "shards"
    assert main(["data", "prepare", "--corpus", f"{shards_dir}/*.parquet", "--tokenizer", "char",
                 "--out", str(out), "--workers", "1"]) == 0
    s = open_shards(out)
    tok = s.tokenizer()
    val = tok.decode(np.asarray(s.tokens("val")).tolist())
    train = tok.decode(np.asarray(s.tokens("train")).tolist())
    assert doc(9) in val and doc(19) in val and doc(0) in train and doc(9) not in train
    assert s.meta["splits"]["val"]["documents"] == 2 and s.meta["splits"]["train"]["documents"] == 23


def test_text_column_and_bad_parquet_files(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"content": ["a b", None, "c d"], "n": [1, 2, 3]}), f)
    with pytest.raises(UserError, match=r"no column 'text' \(columns: content, n\); name the text column "
                                        r"with --text-column"):
        list(open_corpus(str(f)).pieces())
    # a null row is skipped
    assert [p.text for p in open_corpus(str(f), text_column="content").pieces()] == ["a b", "c d"]
    with pytest.raises(UserError, match="column 'n' holds int64, not strings"):
        list(open_corpus(str(f), text_column="n").pieces())
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="junk.parquet: not a readable Parquet file"):
        list(open_corpus(str(junk)).pieces())
    j = tmp_path / "c.jsonl"  # the same flag names the JSONL field
    j.write_text(json.dumps({"content": "from jsonl"}) + "\n")
    assert [p.text for p in open_corpus(str(j), text_column="content").pieces()] == ["from jsonl"]


def test_invalid_utf8_in_parquet_is_refused_or_replaced(tmp_path):
    f = tmp_path / "bad.parquet"
    raw = pa.array([b"fine", b"bad \xff byte"], pa.binary())
    pq.write_table(pa.table({"text": raw.view(pa.string())}), f)  # Parquet does not check UTF-8
    with pytest.raises(UserError, match=r"bad.parquet: row 2: invalid UTF-8 at byte 4"):
        list(open_corpus(str(f)).pieces())
    assert [p.text for p in open_corpus(str(f)).pieces(errors="replace")] == ["fine", "bad \ufffd byte"]


def test_glob_through_a_symlink_loop_reads_each_file_once(tmp_path):
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    for i in range(12):
        (d / ("sub" if i % 3 else "") / f"doc{i:02d}.txt").write_text(f"document {i}\n")
    (d / "self").symlink_to("..")  # dir/self/dir/self/... : the loop
    os.link(d / "doc00.txt", d / "sub" / "hardlink.txt")  # one file, two names
    for spec in (f"{d}/**/*.txt", str(d)):
        ps = list(open_corpus(spec).pieces(0.1))
        texts = [p.text for p in ps]
        assert sorted(texts) == sorted(f"document {i}\n" for i in range(12))  # each once
        train = {p.text for p in ps if p.split == "train"}
        val = {p.text for p in ps if p.split == "val"}
        assert val and not train & val  # never one document in both splits


def test_fifo_corpus_is_named_a_fifo_and_never_opened(tmp_path, capsys):
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=r"corpus.txt: is a FIFO \(named pipe\), not a regular file"):
        open_corpus(str(fifo))
    assert main(["data", "prepare", "--corpus", str(fifo), "--tokenizer", "char", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "FIFO" in err and "no such file" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "real.txt").write_text("hello\n")  # a FIFO among files is left out, not read (it would hang)
    c = open_corpus(f"{tmp_path}/*.txt")
    assert c.sources == [tmp_path / "real.txt"] and "".join(p.text for p in c.pieces()) == "hello\n"
