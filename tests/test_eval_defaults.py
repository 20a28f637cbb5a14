"""What a fresh clone without evaluation data gets, and `gptforge eval`'s defaults on a speedrun's
runs: the tasks that need no files always run, bits per byte of a finetuned run reads its base
run's shards, and a later evaluation never replaces the speedrun's eval.json."""

import json

import pytest
from helpers import CHAT_TEXT

from gptforge.cli import main
from gptforge.eval import files

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def no_eval_data(tmp_path_factory):
    """Neither the cache nor the folder beside the repository exists (a user's fresh clone)."""
    d = tmp_path_factory.mktemp("noevals")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(files.CACHE_ENV, str(d / "cache"))
        mp.setattr(files, "beside_repo", lambda: d / "beside")
        yield d


@pytest.fixture(scope="module")
def speedrun_dir(no_eval_data):
    corpus = no_eval_data / "c.txt"
    corpus.write_text(CHAT_TEXT * 20)
    out = no_eval_data / "run"
    assert main(["speedrun", "--corpus", str(corpus), "--out", str(out), "--samples", "1",
                 "--eval-limit", "3", "--train", "max_steps=4", "--train", "eval_interval=2",
                 "--model", "n_embd=48", "--train", "depth=1", "--sft-data", "arithmetic:40,identity",
                 "--sft-steps", "3"]) == 0
    return out


def test_speedrun_without_eval_data_still_runs_the_tool_tasks(speedrun_dir):
    for name in ("pretrain", "sft"):
        ev = json.loads((speedrun_dir / name / "eval.json").read_text())
        assert set(ev["tasks"]) == {"chat:arithmetic", "chat:letter_count", "chat:social"}
        assert ev["tasks"]["chat:arithmetic"]["n"] == 3 and ev["bpb"]["bpb"] > 0
    report = (speedrun_dir / "report.md").read_text()
    assert "chat:arithmetic" in report and "chat:letter_count" in report


def test_eval_of_a_finetuned_run_defaults_to_its_base_runs_shards(speedrun_dir, capsys):
    sft = speedrun_dir / "sft"
    before = (sft / "eval.json").read_bytes()
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(sft), "--tasks", "bpb,arithmetic", "--limit", "2",
                 "--no-progress"]) == 0
    written = capsys.readouterr().err.strip().splitlines()[-1].removeprefix("wrote ")
    # a new file beside the speedrun's, which is left as it was
    assert written.startswith(str(sft / "eval-")) and written.endswith(".json")
    assert (sft / "eval.json").read_bytes() == before
    res = json.loads(open(written).read())
    assert res["bpb"]["data"] == str(speedrun_dir / "data") and res["tasks"]["chat:arithmetic"]["n"] == 2
    # the same figure as the speedrun's own eval of this model on those shards
    assert res["bpb"]["bpb"] == pytest.approx(json.loads(before)["bpb"]["bpb"], rel=1e-9)
    # --out names the file: it is written (again) as told
    out = sft / "mine.json"
    for _ in range(2):
        assert main(["eval", "--ckpt", str(sft), "--tasks", "bpb", "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["bpb"]["data"] == str(speedrun_dir / "data")


def test_only_eval_refreshes_the_report(speedrun_dir, capsys):
    report = speedrun_dir / "report.md"
    report.write_text("stale\n")
    assert main(["speedrun", "--out", str(speedrun_dir), "--only", "eval", "--eval-limit", "2",
                 "--samples", "0"]) == 0
    text = report.read_text()
    assert "chat:arithmetic" in text and "n=2" in text
    ev = json.loads((speedrun_dir / "sft" / "eval.json").read_text())
    assert ev["tasks"]["chat:arithmetic"]["n"] == 2


def test_speedrun_sft_doubles_a_rope_models_context(speedrun_dir):
    from gptforge.engine import load_for_inference
    from gptforge.speedrun import SFT_CONTEXT

    pre, _, _ = load_for_inference(str(speedrun_dir / "pretrain"))
    sft, _, _ = load_for_inference(str(speedrun_dir / "sft"))
    assert pre.config.positional == "rope"
    assert sft.config.block_size == SFT_CONTEXT * pre.config.block_size == 256
