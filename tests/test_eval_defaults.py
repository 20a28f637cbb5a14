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
        assert set(ev["tasks"]) == {"chat:arithmetic", "chat:letter_count"}
        assert ev["tasks"]["chat:arithmetic"]["n"] == 3 and ev["bpb"]["bpb"] > 0
    report = (speedrun_dir / "report.md").read_text()
    assert "chat:arithmetic" in report and "chat:letter_count" in report
