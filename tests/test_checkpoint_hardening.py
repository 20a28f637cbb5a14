"""Checkpoints and the commands around them, given damaged or hostile files and settings: every case
is one UserError naming the path (one line, exit 2 from the CLI), never another exception.

Fuzzed (Hypothesis): trainer.json (random bytes, random JSON, mutated valid states) and the
latest/best pointer files.
"""

import json
import os
import pickle
import re
import signal

import pytest
import torch
from helpers import randomize, save_checkpoint_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptforge import checkpoint as ckpt
from gptforge.cli import main
from gptforge.data.shards import open_shards, prepare
from gptforge.engine import load_for_inference
from gptforge.errors import UserError
from gptforge.models import build_model
from gptforge.tokenizer import CharTokenizer

TOK = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz <|>\n")


def _run(tmp_path):
    m = randomize(build_model("gpt", vocab_size=TOK.vocab_size, block_size=16, preset="gpt2", depth=1,
                              n_embd=16, n_head=2))
    return save_checkpoint_dir(tmp_path, m, TOK), m


def _one_line_exit_2(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptforge: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_weights_are_checked_against_their_sha256(tmp_path, capsys):
    run, m = _run(tmp_path)
    ck = ckpt.find_checkpoint(run)
    assert len(ckpt.read_trainer_state(ck).weights_sha256) == 64
    f = ck / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x40  # one flipped bit inside a tensor: safetensors itself cannot see it
    f.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"model.safetensors: corrupt weights file \(sha256"):
        load_for_inference(str(run))
    load_for_inference(str(run), verify=False)  # the escape hatch loads it anyway
    err = _one_line_exit_2(capsys, ["sample", "--ckpt", str(run), "--max-new-tokens", "1"])
    assert str(f) in err
    assert main(["sample", "--ckpt", str(run), "--max-new-tokens", "1", "--no-verify"]) == 0


def test_a_pickle_in_optimizer_pt_is_refused_in_one_line(tmp_path):
    run, m = _run(tmp_path)
    ck = ckpt.find_checkpoint(run)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (ck / "optimizer.pt").write_bytes(pickle.dumps({"optimizers": [Evil()]}, protocol=2))
    opt = torch.optim.AdamW(m.parameters())
    with pytest.raises(UserError) as e:
        ckpt.load_optimizer_state([opt], ck)
    assert "optimizer.pt: corrupt or unsafe optimizer state" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"\x00\xff\xfe junk", b"../../etc/passwd", b"step_1\nstep_2", b"", None])
def test_pointer_files_holding_junk_or_a_directory(tmp_path, content, capsys):
    run, _ = _run(tmp_path)
    latest = run / "ckpt" / "latest"
    latest.unlink()
    if content is None:
        latest.mkdir()
    else:
        latest.write_bytes(content)
    if content == b"":
        with pytest.raises(UserError, match="corrupt pointer file|no checkpoint here"):
            ckpt.find_checkpoint(run)
        return
    with pytest.raises(UserError, match=str(latest)):
        ckpt.find_checkpoint(run)
    _one_line_exit_2(capsys, ["sample", "--ckpt", str(run), "--which", "latest"])


@pytest.mark.parametrize("argv, message", [
    (["sample", "--device", "bogus"], "--device bogus: not a device name"),
    (["sample", "--device", "mps"], "--device mps: this machine has no Apple GPU"),
    (["sample", "--device", "cuda:7"], "--device cuda:7: CUDA is not available"),
    (["sample", "--temperature", "1e-40", "--max-new-tokens", "3"], None),  # tiny but valid: greedy-like
    (["sample", "--max-new-tokens", "100000000000"], "--max-new-tokens 100000000000: expected an integer"),
    (["sample", "--seed", "100000000000000000000"], "--seed 100000000000000000000: expected an integer"),
])
def test_sample_settings(tmp_path, capsys, argv, message):
    run, _ = _run(tmp_path)
    argv = [argv[0], "--ckpt", str(run), *argv[1:]]
    if message is None:
        assert main(argv) == 0
        return
    assert message in _one_line_exit_2(capsys, argv)


def test_prompt_text_cannot_inject_special_tokens_unless_asked(tmp_path, capsys):
    from gptforge.engine import generate

    run, m = _run(tmp_path)
    prompt = "ab<|endoftext|>"
    base = ["sample", "--ckpt", str(run), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "4"]
    assert main(base) == 0
    plain = capsys.readouterr().out
    want = generate(m, [TOK.encode_ordinary(prompt)], 4, temperature=0, stop_tokens=[TOK.eot_id])[0]
    assert plain == prompt + TOK.decode(want) + "\n"  # '<', '|', ... as characters
    assert main(base + ["--special", "allow"]) == 0
    allowed = capsys.readouterr().out
    want = generate(m, [TOK.encode(prompt, allowed_special="all")], 4, temperature=0,
                    stop_tokens=[TOK.eot_id])[0]
    assert allowed == prompt + TOK.decode(want) + "\n"


@pytest.mark.parametrize("make_argv, message", [
    (lambda t: ["plot", str(t / "run"), "--out", str(t / "x.xyz")], "give a file name ending in .png"),
    (lambda t: ["plot", str(t / "run"), "--out", str(t / "noext")], "give a file name ending in .png"),
    (lambda t: ["pretrain", "--config", str(t)], "is a directory, not a TOML config file"),
    (lambda t: ["pretrain", "--data", str(t), "--threads", "100000"],
     "--threads 100000: expected an integer"),
    (lambda t: ["pretrain", "--data", str(t), "--device", "mps"], "device 'mps' requested but"),
    (lambda t: ["export", "--ckpt", str(t / "run"), "--out", str(t)], "is a directory"),
])
def test_more_one_line_errors(tmp_path, capsys, make_argv, message):
    _run(tmp_path)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0, "tokens": 0, "val_loss": 2.0}\n')
    if "--device" in make_argv(tmp_path):  # valid shards, so the device is what gets refused
        from gptforge.data.shards import prepare
        (tmp_path / "c.txt").write_text("abcdefgh " * 500)
        prepare(str(tmp_path / "c.txt"), TOK, tmp_path / "d", workers=1, progress=False)
        argv = make_argv(tmp_path / "d")
    else:
        argv = make_argv(tmp_path)
    assert message in _one_line_exit_2(capsys, argv)
    assert not list(tmp_path.glob("**/*.tmp"))


# --- fuzzing trainer.json and the pointer files ------------------------------------------------------
def _valid_state(tmp_path_factory):
    run, _ = _run(tmp_path_factory.mktemp("valid"))
    ck = ckpt.find_checkpoint(run)
    return ck, json.loads((ck / "trainer.json").read_text())


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                       inner, max_size=4),
                           max_leaves=12)


def _load_or_user_error(ck):
    """Whatever trainer.json holds: a clean load or one UserError naming the file."""
    try:
        model, state = ckpt.load_checkpoint(ck.parent.parent, "latest")
    except UserError as e:
        assert str(ck) in str(e) and "\n" not in str(e), str(e)
        return
    assert isinstance(state, ckpt.RunState) and model is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_trainer_json(tmp_path_factory, data):
    ck, valid = _valid_state(tmp_path_factory)
    kind = data.draw(st.sampled_from(["bytes", "json", "mutate"]))
    if kind == "bytes":
        (ck / "trainer.json").write_bytes(data.draw(st.binary(max_size=200)))
    elif kind == "json":
        (ck / "trainer.json").write_text(json.dumps(data.draw(json_values)))
    else:
        key = data.draw(st.sampled_from(sorted(valid)))
        target = valid
        if key == "model_config":  # also reach inside the model's config
            target, key = valid["model_config"], data.draw(st.sampled_from(sorted(valid["model_config"])))
        target[key] = data.draw(json_values)
        (ck / "trainer.json").write_text(json.dumps(valid))
    _load_or_user_error(ck)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=100))
def test_fuzz_pointer_file(tmp_path_factory, content):
    ck, _ = _valid_state(tmp_path_factory)
    pointer = ck.parent / "latest"
    pointer.write_bytes(content)
    try:
        found = ckpt.find_checkpoint(ck.parent.parent)
    except UserError as e:
        assert "\n" not in str(e) and str(ck.parent) in str(e)
        return
    assert found == ck  # only the real name (with whitespace around it) resolves


def test_a_trainer_json_asking_for_a_huge_model_allocates_nothing(tmp_path):
    run, _ = _run(tmp_path)
    ck = ckpt.find_checkpoint(run)
    st_ = json.loads((ck / "trainer.json").read_text())
    # each within its bounds, together ~70 TB of weights
    st_["model_config"].update(n_embd=65536, n_head=1, n_kv_head=1, n_layer=1024, mlp_hidden=4)
    (ck / "trainer.json").write_text(json.dumps(st_))
    with pytest.raises(UserError, match=r"trainer.json: cannot build the model it describes \(trainer.json "
                                        r"describes a model of [\d,]+ bytes of weights"):
        ckpt.load_checkpoint(run)


def test_run_py_treats_prompt_special_tokens_like_sample(tmp_path):
    import subprocess
    import sys

    from gptforge.engine import generate
    from gptforge.export import export_model

    _, m = _run(tmp_path)
    export_model(m, TOK, tmp_path / "m.bin")
    prompt = "ab<|endoftext|>"
    plain, special_ids = TOK.encode_ordinary(prompt), TOK.encode(prompt, allowed_special="all")
    assert plain != special_ids
    for special, ids in (("ordinary", plain), ("allow", special_ids)):
        r = subprocess.run([sys.executable, "-m", "gptforge.run", str(tmp_path / "m.bin"), "--prompt", prompt,
                            "--temperature", "0", "--max-new-tokens", "4", "--special", special],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        want = generate(m, [ids], 4, temperature=0, stop_tokens=[TOK.eot_id])[0]
        assert r.stdout == prompt + TOK.decode(want) + "\n", special


# --- bounded reads: a FIFO, a device or a sparse giant in place of a JSON file ---------------------
def _replace(f, kind):
    f.unlink()
    if kind == "fifo":
        os.mkfifo(f)  # opened for reading without O_NONBLOCK, this would wait for a writer forever
    elif kind == "dev-zero":
        f.symlink_to("/dev/zero")  # read whole, this never ends
    else:
        with open(f, "wb") as out:  # 8 GB that take no disk space; read whole, they take 8 GB of memory
            out.truncate(8 << 30)


@pytest.mark.parametrize("kind, message", [("fifo", "not a regular file"), ("dev-zero", "not a regular file"),
                                           ("sparse", "8,589,934,592 bytes, more than")])
@pytest.mark.parametrize("name", ["trainer.json", "tokenizer.json", "latest", "meta.json",
                                  "shard tokenizer.json"])
def test_json_files_are_read_bounded(tmp_path, capsys, name, kind, message):
    run, _ = _run(tmp_path)
    ck = ckpt.find_checkpoint(run)
    (tmp_path / "c.txt").write_text("abc def\n" * 100)
    prepare(str(tmp_path / "c.txt"), TOK, tmp_path / "data", workers=1, progress=False)
    f = {"trainer.json": ck / "trainer.json", "tokenizer.json": ck / "tokenizer.json",
         "latest": run / "ckpt" / "latest", "meta.json": tmp_path / "data" / "meta.json",
         "shard tokenizer.json": tmp_path / "data" / "tokenizer.json"}[name]
    _replace(f, kind)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail(f"reading {f} hangs"))
    signal.alarm(20)  # a hang fails the test instead of stalling the suite
    try:
        with pytest.raises(UserError, match=re.escape(str(f)) + ": .*" + message):
            if f.parent.name == "data":
                open_shards(tmp_path / "data")
            else:
                load_for_inference(run)
        if f.parent.name != "data":
            _one_line_exit_2(capsys, ["sample", "--ckpt", str(run), "--max-new-tokens", "1"])
    finally:
        signal.alarm(0)
