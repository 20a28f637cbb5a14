"""No bad value of a numeric flag ends in a traceback: every numeric flag of every command in the
README, given nan, inf, -1, 0 and 1e20, either works or is refused in one line with exit 2.

Each command runs on real, tiny inputs (a small corpus, shards, a checkpoint), so a value that is
accepted really reaches the code that uses it; speedrun, sft and chat get a path that does not exist
(an accepted value would start real training, or needs a chat model), which they check after all
their arguments.
"""

import argparse

import pytest
import torch

from gptforge.cli import COMMANDS, build_parser, main

MISSING = "/nonexistent/gptforge-test"
# command line prefixes that reach each command's numeric flags ({data}, {ckpt}, {out}: see `inputs`)
PREFIXES = {
    "speedrun": ["speedrun", "--corpus", MISSING],
    "data prepare": ["data", "prepare", "--corpus", "{corpus}", "--tokenizer", "char", "--workers", "1"],
    "tokenizer train": ["tokenizer", "train", "--corpus", "{corpus}", "--vocab-size", "300", "--no-progress"],
    "model info": ["model", "info", "--depth", "1"],
    "pretrain": ["pretrain", "--data", "{data}", "--depth", "1", "--model", "n_embd=16",
                 "--model", "n_head=1", "--batch-size", "2", "--block-size", "8", "--max-steps", "2",
                 "--eval-tokens", "16", "--threads", "1", "--progress", "none"],
    "sample": ["sample", "--ckpt", "{ckpt}", "--max-new-tokens", "2", "--num-samples", "1"],
    "sft": ["sft", "--ckpt", MISSING, "--data", "identity"],  # an accepted value would start training
    "chat": ["chat", "--ckpt", MISSING, "-p", "hi"],
    "dpo": ["dpo", "--ckpt", MISSING, "--prefs", MISSING],  # an accepted value would start training
    "rl": ["rl", "--ckpt", MISSING, "--tasks", "arithmetic"],  # an accepted value would start training
    "arena ratings": ["arena", "ratings", "--battles", MISSING],
    "arena auto": ["arena", "auto", "--ckpt", MISSING, "--ckpt", MISSING + "2"],
    "eval": ["eval", "--ckpt", "{ckpt}", "--tasks", "bpb", "--no-progress"],
    "serve": ["serve", "--ckpt", MISSING],  # an accepted value would start a server
    "inspect batch": ["inspect", "batch", "--run", "{ckpt}", "--step", "1"],
    "doctor": ["doctor", "--run", MISSING],  # an accepted value would run every check
    "explore": ["explore", "--ckpt", MISSING, "--corpus", "{corpus}", "--out", MISSING],
    "lineage": ["lineage", "--corpus", MISSING],  # an accepted value would start training
    "scaling": ["scaling", "--corpus", MISSING],  # an accepted value would start training
    "poison": ["poison", "--corpus", MISSING],  # an accepted value would start training
    "probe icl": ["probe", "icl", "--ckpt", "{ckpt}"],
}
# these get a fresh --out each
WRITES = ("speedrun", "data prepare", "tokenizer train", "pretrain", "probe icl")
VALUES = ["nan", "inf", "-1", "0", "1e20"]


def _numeric_flags(words: list[str]) -> list[str]:
    """The options of the (sub)command ``words`` whose value is a number (by type or metavar)."""
    parser = build_parser(words[0])
    for w in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)) \
            if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions) else None
        if sub is not None and w in sub.choices:
            parser = sub.choices[w]
    flags = []
    for a in parser._actions:
        if a.option_strings and (a.type in (int, float) or a.metavar in ("N", "X")):
            flags.append(a.option_strings[-1])
    return flags


CASES = [(cmd, flag, v) for cmd in PREFIXES for flag in _numeric_flags(cmd.split()) for v in VALUES]


def test_every_command_is_covered():
    no_numeric_flags = {"plot", "export", "import", "report"}
    assert {c.split()[0] for c in PREFIXES} == set(COMMANDS) - no_numeric_flags
    assert len({c for c, _, _ in CASES}) == len(PREFIXES) and len(CASES) > 150


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    from gptforge.data.shards import prepare
    from gptforge.tokenizer import CharTokenizer
    from gptforge.train import Logger, make_config, train

    d = tmp_path_factory.mktemp("inputs")
    text = "To be, or not to be, that is the question.\n" * 200
    (d / "c.txt").write_text(text)
    prepare(str(d / "c.txt"), CharTokenizer.train(text), d / "data", workers=1, progress=False)
    train(make_config({"data": str(d / "data"), "out": str(d / "run"), "depth": 1, "block_size": 8,
                       "batch_size": 2, "max_steps": 1, "eval_tokens": 16, "threads": 1,
                       "model": {"n_embd": 16, "n_head": 1}}), logger=Logger("none"))
    return {"corpus": str(d / "c.txt"), "data": str(d / "data"), "ckpt": str(d / "run")}


@pytest.fixture(autouse=True)
def _keep_threads_and_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))  # MFU probe
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("cmd, flag, value", CASES)
def test_numeric_flag_values_never_traceback(cmd, flag, value, inputs, tmp_path, capsys):
    argv = [w.format(**inputs) for w in PREFIXES[cmd]]
    if cmd in WRITES:
        argv += ["--out", str(tmp_path / "out")]
    argv += [flag, value]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), f"{argv}: exit {code}\n{err}"
    assert "Traceback" not in err, err
    if code == 2:  # one line that says which flag (or, for speedrun, the missing corpus) is the problem
        assert err.startswith("gptforge") and err.count("\n") == 1, err
        squash = lambda t: t.replace("-", "").replace("_", "").replace(" ", "")
        assert squash(flag) in squash(err) or MISSING in err, err


UNDERFLOW = ["1e-46", "5e-324", "1e-320"]  # positive, but 0 in float32
SAMPLING_CASES = [(cmd, flag, v) for cmd in ("sample", "chat") for flag in _numeric_flags([cmd])
                  if flag != "--num-samples" for v in UNDERFLOW]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> str:
    from helpers import tiny_chat_base

    return str(tiny_chat_base(tmp_path_factory.mktemp("chat"), 64)[0])


@pytest.mark.parametrize("cmd, flag, value", SAMPLING_CASES)
def test_sampling_flags_that_underflow_float32_never_traceback(cmd, flag, value, chat_run, capsys):
    """Every sampling flag of `sample` and `chat` (on a model with the chat tokens) given a positive
    value that is 0 in float32: a temperature is greedy, a top_p keeps the top token; integer flags
    refuse it in one line."""
    argv = [cmd, "--ckpt", chat_run, "--max-new-tokens", "3", flag, value]
    argv += ["--prompt", "hi"] if cmd == "sample" else ["-p", "hi"]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    if flag in ("--temperature", "--top-p"):
        assert code == 0, err
        greedy = [cmd, "--ckpt", chat_run, "--max-new-tokens", "3", "--temperature", "0"] + argv[-2:]
        assert main(greedy) == 0 and capsys.readouterr().out == out
    else:
        assert code == 2 and err.count("\n") == 1 and flag.lstrip("-") in err, err
