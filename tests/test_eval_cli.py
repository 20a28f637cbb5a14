"""`gptforge eval` end to end: task names resolve to the right evaluator, a run directory and a
Hugging Face folder both evaluate, the JSON holds what the table shows, and mistakes are one line."""

import json

import pytest
import torch
from helpers import SHARED, needs_shared, shared_file, tiny_chat_base

from gptforge.cli import main
from gptforge.engine import load_for_inference
from gptforge.errors import UserError
from gptforge.eval import bpb, core
from gptforge.eval.suite import resolve_tasks
from gptforge.io import write_json

pytestmark = needs_shared


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcli")
    run, _ = tiny_chat_base(d, 64)
    return d, run


def test_task_names_resolve():
    p = resolve_tasks("core")
    assert p.core_all and p.core == [t.label for t in core.CORE_TASKS] and not p.chat and not p.bpb
    p = resolve_tasks("arc_easy, chat:arc_easy,gsm8k,bpb,arc_easy")
    assert p.core == ["arc_easy"] and p.chat == ["arc_easy", "gsm8k"] and p.bpb and not p.core_all
    assert resolve_tasks("core:piqa").core == ["piqa"]
    for bad in ("nope", "chat:piqa", "core:gsm8k", " , "):
        with pytest.raises(UserError):
            resolve_tasks(bad)


def test_eval_run_directory_writes_table_and_json(base, capsys):
    d, run = base
    out = d / "e.json"
    assert main(["eval", "--ckpt", str(run), "--tasks", "arc_easy,chat:arithmetic,bpb", "--limit", "4",
                 "--out", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert set(res["tasks"]) == {"core:arc_easy", "chat:arithmetic"}
    assert res["tasks"]["core:arc_easy"]["n"] == 4 and res["tasks"]["chat:arithmetic"]["n"] == 4
    assert res["tasks"]["core:arc_easy"]["baseline"] == 0.25 and res["core_tasks"] == ["arc_easy"]
    assert res["chatcore_tasks"] == ["arithmetic"]
    # bpb defaults to the run's own val shards, and equals the library's figure
    model, tok, _ = load_for_inference(str(run))
    want = bpb.bpb_shards(model, d / "data", "val", tok)["bpb"]
    assert res["bpb"]["bpb"] == pytest.approx(want, rel=1e-9) and res["bpb"]["data"] == str(d / "data")
    assert "core:arc_easy" in table and "chat:arithmetic" in table and f"{want:.4f}" in table
    # the same task through the library: the CLI adds nothing to the figures
    lib = core.evaluate_core(model, tok, SHARED / "evals", ["arc_easy"], limit=4)
    assert res["tasks"]["core:arc_easy"]["accuracy"] == lib["tasks"]["arc_easy"]["accuracy"]


def test_eval_mistakes_are_one_line(base, tmp_path, capsys):
    d, run = base
    # a bad task name fails before anything is loaded (the checkpoint path does not even exist)
    assert main(["eval", "--ckpt", str(tmp_path / "nothing"), "--tasks", "arc_easy,nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptforge: error: unknown task 'nope'") and err.count("\n") == 1
    assert main(["eval", "--ckpt", str(run), "--limit", "0"]) == 2
    assert "--limit 0" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(run), "--tasks", "bpb", "--data", str(tmp_path / "none.txt")]) == 2
    assert "none.txt: no such text file" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(run), "--tasks", "piqa", "--eval-data", str(tmp_path)]) == 2
    assert "gptforge: error:" in capsys.readouterr().err


def test_eval_hugging_face_folder(tmp_path, capsys):
    """A GPT-2-layout model saved as an HF folder evaluates with --tokenizer (GPT-2's rank file) and
    scores the same as the model it was saved from."""
    from gptforge.models import GPT, gpt_config
    from gptforge.models.hf import save_hf
    from gptforge.tokenizer.openai import load_rank_file

    ranks = shared_file("tiktoken", "r50k_base.tiktoken")
    torch.manual_seed(0)
    model = GPT(gpt_config("gpt2", vocab_size=50257, block_size=96, n_layer=1, n_head=2, n_embd=16)).eval()
    save_hf(model, tmp_path / "hf")
    assert main(["eval", "--ckpt", str(tmp_path / "hf"), "--tasks", "piqa"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    out = tmp_path / "e.json"
    assert main(["eval", "--ckpt", str(tmp_path / "hf"), "--tokenizer", str(ranks), "--tasks", "piqa",
                 "--limit", "6", "--shots", "0", "--out", str(out), "--no-progress"]) == 0
    got = json.loads(out.read_text())["tasks"]["core:piqa"]
    lib = core.evaluate_core(model, load_rank_file(ranks), SHARED / "evals", ["piqa"], limit=6, shots=0)
    assert got["accuracy"] == lib["tasks"]["piqa"]["accuracy"] and got["shots"] == 0


def test_report_puts_runs_side_by_side(base, tmp_path, capsys):
    """`gptforge report` reads metrics.jsonl and eval.json: a column per run, a row per task, the PNG."""
    d, run = base
    assert main(["eval", "--ckpt", str(run), "--tasks", "piqa,bpb", "--limit", "3", "--no-progress"]) == 0
    res = json.loads((run / "eval.json").read_text())
    out = tmp_path / "cmp.md"
    capsys.readouterr()
    assert main(["report", str(run), str(run), "--out", str(out)]) == 0
    text = out.read_text()
    assert capsys.readouterr().out == text + "\n"  # printed as written
    assert text.startswith("# gptforge report\n\n![loss and accuracy](cmp.png)\n")
    piqa = res["tasks"]["core:piqa"]
    cell = f"{piqa['accuracy']:.1%} ({piqa['centered']:+.3f}), n=3"
    assert f"| core:piqa | {cell} | {cell} |" in text and f"{res['bpb']['bpb']:.4f}" in text
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(run), "--out", str(tmp_path / "cmp.txt")]) == 2
    assert "give a file name ending in .md" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_accuracies_carry_wilson_intervals_and_report_compares_on_the_same_items(base, tmp_path, capsys):
    """eval.json keeps per-item correctness and a Wilson interval per accuracy (statsmodels'); the
    report card states the paired (McNemar) difference between neighbouring runs in words."""
    from statsmodels.stats.proportion import proportion_confint

    d, run = base
    out = tmp_path / "e.json"
    assert main(["eval", "--ckpt", str(run), "--tasks", "piqa,chat:letter_count", "--limit", "6",
                 "--out", str(out), "--no-progress"]) == 0
    assert "95% interval" in capsys.readouterr().out
    res = json.loads(out.read_text())
    for name in ("core:piqa", "chat:letter_count"):
        r = res["tasks"][name]
        assert len(r["correct"]) == r["n"] and sum(r["correct"]) / r["n"] == pytest.approx(r["accuracy"])
        want = proportion_confint(sum(r["correct"]), r["n"], method="wilson")
        assert r["ci95"] == pytest.approx(list(want))
    (run / "eval.json").write_text(out.read_text())
    assert main(["report", str(run), str(run), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert f"{run.name} vs {run.name} on chat:letter_count: +0 points, p = 1 (not significant" in text


def test_json_writer_turns_undefined_numbers_into_null(tmp_path):
    """eval.json, trainer.json and the speedrun's files go through write_json: the accuracy of a task
    with no items (nan) or an infinite value must not crash the write (JSON has no NaN)."""
    obj = {"tasks": {"empty": {"n": 0, "accuracy": float("nan")}}, "ratios": [1.0, float("inf")]}
    write_json(tmp_path / "eval.json", obj)
    assert json.loads((tmp_path / "eval.json").read_text()) == {
        "tasks": {"empty": {"n": 0, "accuracy": None}}, "ratios": [1.0, None]}
