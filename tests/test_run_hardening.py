"""run.py against damaged and hostile model.bin files and settings; export's failure modes.

run.py must answer any input with either a clean run or one line on stderr (exit status 2; `load`
raises SystemExit naming the file), never a traceback and never an allocation the file does not
justify. The risky reproductions run in a subprocess under RLIMIT_AS, so an unfixed runner fails the
test with MemoryError instead of swapping the machine.
"""

import contextlib
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from helpers import randomize, save_checkpoint_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptforge import export
from gptforge import run as runner
from gptforge.cli import main as gptforge_main
from gptforge.errors import UserError
from gptforge.export import export_model
from gptforge.models import build_model
from gptforge.models.gpt import MLPS, NORMS, POSITIONALS
from gptforge.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "gptforge" / "run.py"
TOK = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ,.:\n")
LIMIT_AS = 1 << 30  # address space for a runner subprocess: numpy needs ~0.3 GiB, the tiny models nothing


def tiny(preset: str, vocab_size: int = TOK.vocab_size, **kw) -> torch.nn.Module:
    """A 2-layer GPT 16 wide (a model.bin of ~20 KB), every weight random."""
    torch.manual_seed(0)
    return randomize(build_model("gpt", vocab_size=vocab_size, block_size=16, preset=preset, depth=2,
                                 n_embd=16, n_head=2, **kw))


@pytest.fixture(scope="module")
def bins(tmp_path_factory) -> dict[str, Path]:
    """Valid files: learned positions + LayerNorm + tied (gpt2), RoPE + untied + softcap in bf16
    (modern), and a byte-level BPE tokenizer with GQA and SwiGLU."""
    from gptforge.tokenizer.bpe import BPETokenizer

    d = tmp_path_factory.mktemp("bins")
    bpe = BPETokenizer.train("the quick brown fox jumps over the lazy dog. " * 20, 270)
    export_model(tiny("gpt2"), TOK, d / "gpt2.bin")
    export_model(tiny("modern"), TOK, d / "modern.bin", dtype="bfloat16")
    export_model(tiny("modern", bpe.vocab_size, n_kv_head=1, mlp="swiglu"), bpe, d / "bpe.bin")
    return {p.stem: p for p in d.glob("*.bin")}


def split(path: Path) -> tuple[dict, bytes]:
    """A model.bin as (header, data section), to be changed and written back with `craft`."""
    b = path.read_bytes()
    hlen = struct.unpack("<Q", b[16:24])[0]
    return json.loads(b[24:24 + hlen]), b[-(-(24 + hlen) // 64) * 64:]


def craft(path: Path, header, data: bytes = b"", hlen: int | None = None) -> Path:
    """Write a model.bin from a header (dict or raw bytes) and a data section; hlen overrides the
    stored header length."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    prefix = export.MAGIC + struct.pack("<IIQ", export.VERSION, 0, len(h) if hlen is None else hlen) + h
    path.write_bytes(prefix + b"\0" * (-len(prefix) % export.ALIGN) + data)
    return path


def mutated(src: Path, dst: Path, change) -> Path:
    """dst: src with ``change(header)`` applied to its header (in place)."""
    header, data = split(src)
    change(header)
    return craft(dst, header, data)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def run_py(path, *args, timeout=60) -> subprocess.CompletedProcess:
    """`python run.py path args...` with its address space limited to LIMIT_AS."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(RUN_PY), str(path), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=_limit_memory, env=env)


def run_main(*argv) -> tuple[int, str, str]:
    """run.py's main() in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = runner.main([str(a) for a in argv])
        except SystemExit as e:  # argparse's --help, or a runner that lets SystemExit through
            rc = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                print(e.code, file=err)
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc: int, err: str, *needles: str):
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


# --- the reproductions, each a file or a setting -----------------------------------------
def test_huge_block_size_allocates_nothing_with_rope_and_is_refused_with_learned_positions(bins, tmp_path):
    f = mutated(bins["modern"], tmp_path / "rope.bin", lambda h: h["model"].update(block_size=10 ** 8))
    r = run_py(f, "--prompt", "ab", "--max-new-tokens", 5, "--temperature", 0, "--ids")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == run_py(bins["modern"], "--prompt", "ab", "--max-new-tokens", 5,
                                      "--temperature", 0, "--ids").stdout.strip()
    f = mutated(bins["gpt2"], tmp_path / "learned.bin", lambda h: h["model"].update(block_size=10 ** 8))
    r = run_py(f, "--max-new-tokens", 5)
    assert_one_line_error(r.returncode, r.stderr, str(f), "transformer.wpe.weight")


def test_huge_special_token_id(bins, tmp_path):
    f = mutated(bins["gpt2"], tmp_path / "m.bin",
                lambda h: h["tokenizer"]["special_tokens"].update({"<|endoftext|>": 10 ** 10}))
    r = run_py(f, "--max-new-tokens", 5)
    assert_one_line_error(r.returncode, r.stderr, str(f), "special token", "10000000000")


def test_huge_header_length(bins, tmp_path):
    header, data = split(bins["gpt2"])
    f = craft(tmp_path / "m.bin", header, data, hlen=10 ** 12)
    r = run_py(f, "--max-new-tokens", 5)
    assert_one_line_error(r.returncode, r.stderr, str(f), "header of 1000000000000 bytes")


@pytest.mark.parametrize("change,needle", [
    (lambda h: h["model"].update(n_head=0), "n_head must be a positive integer"),
    (lambda h: h["model"].update(n_layer=1), "unexpected tensor 'transformer.h.1."),  # extra layers
    (lambda h: h["model"].update(n_layer=3), "tensor transformer.h.2."),  # missing layers
    (lambda h: h.update(dtype="int8"), "unknown dtype 'int8'"),
    (lambda h: h["tokenizer"].update(kind="evil"), "unknown tokenizer kind 'evil'"),
    (lambda h: h["tensors"]["transformer.wte.weight"].update(offset=10 ** 9), "truncated"),
    (lambda h: h["tensors"]["transformer.wte.weight"].update(shape=[16, 32]), "has shape [16, 32]"),
    (lambda h: h["tensors"]["transformer.wte.weight"].update(nbytes=8), "nbytes 8"),
    (lambda h: h["tensors"].update(extra={"shape": [1], "offset": 0, "nbytes": 4}), "unexpected tensor"),
    (lambda h: h["model"].update(mlp="tanh"), "unknown model mlp 'tanh'"),
    (lambda h: h["model"].update(norm_eps=None), "norm_eps"),
    (lambda h: h["tokenizer"]["special_tokens"].update({"": 31}), "special token ''"),
    (lambda h: h.update(tokenizer=[]), "tokenizer kind"),
    (lambda h: h.update(model=None), "not a GPT"),
    (lambda h: [t.update(offset=0) for t in h["tensors"].values()], "overlap"),  # issue 27.17: garbage
    (lambda h: h["tensors"]["transformer.h.0.ln_1.weight"].update(
        offset=h["tensors"]["transformer.wte.weight"]["offset"] + 64), "overlap"),
])
def test_invalid_header_fields_are_one_line_errors(bins, tmp_path, change, needle):
    f = mutated(bins["gpt2"], tmp_path / "m.bin", change)
    with pytest.raises(SystemExit) as e:
        runner.load(str(f))
    assert str(e.value.code).startswith(f"{f}: ") and needle in str(e.value.code)
    assert_one_line_error(*run_main(f, "--max-new-tokens", 3)[::2], str(f), needle)


@pytest.mark.parametrize("cut", [10, 30, 200, -100])  # in the prefix, in the header (x2), in the data
def test_truncated_file(bins, tmp_path, cut):
    b = bins["gpt2"].read_bytes()
    f = tmp_path / "m.bin"
    f.write_bytes(b[:cut])
    assert_one_line_error(*run_main(f, "--max-new-tokens", 3)[::2], str(f))


def test_header_cut_short_of_its_length(bins, tmp_path):
    header, data = split(bins["gpt2"])
    raw = json.dumps(header).encode()
    f = craft(tmp_path / "m.bin", raw[: len(raw) // 2], data, hlen=len(raw) // 2)
    assert_one_line_error(*run_main(f)[::2], str(f), "not valid JSON")


def test_bpe_tokenizer_problems(bins, tmp_path):
    for change, needle in [(lambda h: h["tokenizer"]["vocab"].__setitem__(3, "!!"), "not base64"),
                           (lambda h: h["tokenizer"]["vocab"].pop(0), "256 single bytes"),
                           (lambda h: h["tokenizer"].update(pattern="(unclosed"), "does not compile")]:
        f = mutated(bins["bpe"], tmp_path / "m.bin", change)
        assert_one_line_error(*run_main(f)[::2], str(f), needle)


def test_missing_and_unreadable_paths(tmp_path):
    assert_one_line_error(*run_main(tmp_path / "nope.bin")[::2], "nope.bin", "cannot read")
    assert_one_line_error(*run_main(tmp_path)[::2], str(tmp_path), "cannot read")


def test_nan_weights_and_overflowing_weights(tmp_path):
    m = tiny("gpt2")
    with torch.no_grad():
        m.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    export_model(m, TOK, tmp_path / "nan.bin")
    assert_one_line_error(*run_main(tmp_path / "nan.bin")[::2], "nan.bin", "transformer.h.0.mlp.c_fc.weight")
    m = tiny("gpt2")
    with torch.no_grad():  # finite weights whose queries overflow float32: NaN logits
        m.transformer.h[0].attn.c_attn.weight.fill_(3e38)
    export_model(m, TOK, tmp_path / "big.bin")
    assert_one_line_error(*run_main(tmp_path / "big.bin", "--temperature", 1)[::2], "big.bin", "not finite")


def test_prompt_character_outside_the_vocabulary(bins):
    assert_one_line_error(*run_main(bins["gpt2"], "--prompt", "ABC")[::2], str(bins["gpt2"]), "'A'")


@pytest.mark.parametrize("args,needle", [
    (["--seed", "-1"], "--seed"), (["--seed", "1e20"], "--seed"), (["--max-new-tokens", "1e11"], "--max-new"),
    (["--max-new-tokens", "-5"], "--max-new"), (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"), (["--temperature", "-1"], "--temperature"),
    (["--top-k", "0"], "--top-k"), (["--top-k", "-3"], "--top-k"), (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"), (["--top-p", "nan"], "--top-p"), (["--top-k", "2.5"], "--top-k"),
])
def test_invalid_settings_are_one_line_errors(bins, args, needle):
    assert_one_line_error(*run_main(bins["gpt2"], "--temperature", 1, *args)[::2], needle)


def test_top_k_beyond_the_vocabulary_keeps_every_token(bins):
    common = [bins["gpt2"], "--prompt", "ab", "--temperature", 1, "--seed", 3, "--max-new-tokens", 20,
              "--ids"]
    rc, out, err = run_main(*common, "--top-k", 99999)
    assert rc == 0, err
    assert out == run_main(*common)[1] == run_main(*common, "--top-k", TOK.vocab_size)[1]
    rc, out, _ = run_main("--help")  # the clamp is documented there
    assert rc == 0 and "k >= the vocabulary size keeps them all" in " ".join(out.split())


def test_top_p_keeps_the_smallest_set_reaching_p(bins):
    common = [bins["modern"], "--prompt", "ab", "--max-new-tokens", 15, "--ids", "--seed", 1]
    greedy = run_main(*common, "--temperature", 0)[1]
    assert run_main(*common, "--temperature", 1, "--top-p", 1e-9)[1] == greedy  # only the top token
    assert run_main(*common, "--temperature", 1, "--top-p", 1.0)[1] != greedy


def test_ids_past_the_tokenizer_decode_to_nothing(tmp_path):
    # a model vocabulary padded past the tokenizer's 32 tokens: the runner may sample a padding id
    export_model(tiny("gpt2", vocab_size=64), TOK, tmp_path / "pad.bin")
    common = [tmp_path / "pad.bin", "--prompt", "ab", "--temperature", 1, "--seed", 0, "--max-new-tokens", 30]
    rc, out, err = run_main(*common, "--ids")
    assert rc == 0 and any(i >= TOK.vocab_size for i in json.loads(out)), err
    rc, out, err = run_main(*common)
    assert rc == 0 and out.startswith("ab"), err


# --- properties: random files and mutated headers ------------------------------------------------
def exercise(path: Path):
    """Everything run.py does with a file. Asserts: a clean run, or one line naming the path; and no
    allocation of more than a few times the file's size."""
    size = path.stat().st_size
    tracemalloc.start()
    try:
        try:
            runner.load(str(path))
        except SystemExit as e:
            msg = str(e.code)
            assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
        rc, _, err = run_main(path, "--prompt", "ab", "--max-new-tokens", 3, "--temperature", 1,
                              "--seed", 0, "--ids")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rc == 0 or (rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1), err
    assert peak < 4 * size + (4 << 20), f"peak {peak} bytes for a {size}-byte file"


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=8)
    | st.integers() | st.sampled_from([0, -1, 1, 2, 3, 16, 32, 64, 10 ** 8, 10 ** 12, 2 ** 63, 2 ** 64]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def paths(node, at=()):
    """Every place in a JSON tree (long lists: their first two and last items only)."""
    yield at
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, at + (k,))
    elif isinstance(node, list):
        for i in sorted({0, 1, len(node) - 1} & set(range(len(node)))):
            yield from paths(node[i], at + (i,))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prop") / "model.bin"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_headers_load_cleanly_or_fail_in_one_line(bins, scratch, data):
    header, body = split(bins[data.draw(st.sampled_from(sorted(bins)), label="base")])
    op = data.draw(st.sampled_from(["set", "delete", "nudge", "hlen", "cut"]), label="op")
    where = data.draw(st.sampled_from([p for p in paths(header) if p]), label="where")
    parent = header
    for k in where[:-1]:
        parent = parent[k]
    if op == "set":
        parent[where[-1]] = data.draw(JSON, label="value")
    elif op == "delete":
        parent.pop(where[-1])
    elif op == "nudge":  # near a valid value: shapes and sizes that almost agree
        old = parent[where[-1]]
        if isinstance(old, int) and not isinstance(old, bool):
            parent[where[-1]] = old + data.draw(st.sampled_from([-64, -2, -1, 1, 2, 64]), label="delta")
    raw = json.dumps(header).encode()
    hlen = data.draw(st.integers(0, 2 ** 64 - 1) | st.integers(0, len(raw) + 200), label="hlen") \
        if op == "hlen" else None
    craft(scratch, raw, body, hlen)
    if op == "cut":
        b = scratch.read_bytes()
        scratch.write_bytes(b[: data.draw(st.integers(0, len(b) - 1), label="cut")])
    exercise(scratch)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=st.binary(max_size=300), hlen=st.integers(0, 2 ** 64 - 1), magic=st.booleans())
def test_random_bytes_load_cleanly_or_fail_in_one_line(scratch, blob, hlen, magic):
    prefix = export.MAGIC + struct.pack("<IIQ", export.VERSION, 0, hlen) if magic else b""
    scratch.write_bytes(prefix + blob)
    exercise(scratch)


# --- export --------------------------------------------------------------------------------------
def _checkpoint(tmp_path, model):
    return save_checkpoint_dir(tmp_path, model, TOK)


def test_export_to_a_directory_is_a_clear_error_and_leaves_no_tmp(tmp_path, capsys):
    d = tmp_path / "out"
    d.mkdir()
    with pytest.raises(UserError, match="is a directory"):
        export_model(tiny("gpt2"), TOK, d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any(d.iterdir())
    run = _checkpoint(tmp_path, tiny("gpt2"))
    assert gptforge_main(["export", "--ckpt", str(run), "--out", str(d)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.tmp").exists()


def test_out_that_is_a_fifo_or_a_symlink_is_refused_not_replaced(tmp_path, capsys):
    """Issue 27.2: renaming over a FIFO, symlink or device node would replace it (as root, `--out
    /dev/full` turned the device into a file); made here in tmp_path, /dev itself is never touched."""
    from gptforge.io import atomic_write

    run = _checkpoint(tmp_path, tiny("gpt2"))
    fifo, target, link = tmp_path / "pipe", tmp_path / "kept.bin", tmp_path / "link.bin"
    os.mkfifo(fifo)
    target.write_bytes(b"precious")
    link.symlink_to(target)
    for out, needle in ((fifo, "not a regular file"), (link, "a symlink")):
        assert gptforge_main(["export", "--ckpt", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert needle in err and str(out) in err and len(err.strip().splitlines()) == 1
        with pytest.raises(UserError, match=needle):
            atomic_write(out, "{}")
    assert gptforge_main(["data", "corpus", "shakespeare", "--out", str(link)]) == 2  # wrote through it
    assert "a symlink" in capsys.readouterr().err
    assert fifo.is_fifo() and link.is_symlink() and target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_export_write_failure_leaves_no_tmp(tmp_path):
    (tmp_path / "file").write_text("x")  # so the output's parent directory cannot be created
    with pytest.raises(UserError, match="cannot write"):
        export_model(tiny("gpt2"), TOK, tmp_path / "file" / "m.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    with pytest.raises(UserError, match="dtype"):
        export_model(tiny("gpt2"), TOK, tmp_path / "m.bin", dtype="int8")
    with pytest.raises(UserError, match="vocab_size"):
        export_model(tiny("gpt2", vocab_size=8), TOK, tmp_path / "m.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --- the runner and the exporter agree; the runner ships in the package ---------------------------
def test_format_constants_agree_with_the_exporter():
    assert (runner.MAGIC, runner.VERSION, runner.ALIGN) == (export.MAGIC, export.VERSION, export.ALIGN)
    assert runner.DTYPES == {k: v.itemsize for k, v in export.DTYPES.items()}
    assert runner.TOKENIZER_KINDS == export.TOKENIZER_KINDS
    assert (runner.POSITIONALS, runner.NORMS, runner.MLPS) == (POSITIONALS, NORMS, MLPS)


def test_exported_tensors_are_exactly_the_ones_the_runner_expects(bins):
    for path in bins.values():
        header, _ = split(path)
        want = runner.tensor_shapes(header["model"])
        assert {k: tuple(t["shape"]) for k, t in header["tensors"].items()} == want


def test_python_m_gptforge_run_from_an_installed_package(bins, tmp_path):
    """pip-install a copy of the sources (not editable) and run the module with torch unavailable."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "gptforge", src / "gptforge", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(tmp_path / "site"), str(src)], check=True,
                   capture_output=True, cwd=tmp_path)
    code = ("import sys, runpy; sys.modules['torch'] = None; import gptforge; print(gptforge.__file__); "
            "sys.argv[0] = 'run.py'; runpy.run_module('gptforge.run', run_name='__main__', alter_sys=True)")
    r = subprocess.run([sys.executable, "-c", code, str(bins["gpt2"]), "--prompt", "ab", "--temperature", "0",
                        "--max-new-tokens", "5", "--ids"], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")))
    assert r.returncode == 0, r.stderr
    installed, ids = r.stdout.splitlines()
    assert installed.startswith(str(tmp_path / "site"))
    assert json.loads(ids) == json.loads(run_main(bins["gpt2"], "--prompt", "ab", "--temperature", 0,
                                                  "--max-new-tokens", 5, "--ids")[1])
    r = subprocess.run([sys.executable, "-m", "gptforge.run", "--help"], capture_output=True, text=True,
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")))
    assert r.returncode == 0 and "--top-p" in r.stdout


@pytest.mark.parametrize("value", ["1e-46", "5e-324", "1e-320"])
def test_sampling_values_that_underflow_are_greedy(bins, value):
    """Issue 27.1: `run.py --temperature 1e-320` divided the logits into inf and raised on nan
    probabilities. A temperature below float32's smallest normal number is greedy (as the engine), and
    a top_p that small keeps the top token only: both give the greedy tokens."""
    greedy = run_py(bins["modern"], "--prompt", "ab", "--max-new-tokens", 6, "--temperature", 0, "--ids")
    assert greedy.returncode == 0, greedy.stderr
    for flags in (("--temperature", value), ("--temperature", 1, "--top-p", value)):
        r = run_py(bins["modern"], "--prompt", "ab", "--max-new-tokens", 6, "--seed", 1, "--ids", *flags)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stdout == greedy.stdout
