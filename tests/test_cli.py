"""The `gptforge` command: help, data subcommands, and one-line errors with exit code 2."""

import hashlib
import subprocess
import sys

import pytest

from gptforge.cli import main
from gptforge.data import shakespeare


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptforge", *args], capture_output=True, text=True)


def test_help_lists_every_command_without_importing_torch():
    from gptforge.cli import COMMANDS

    r = run("--help")
    assert r.returncode == 0
    listed = " ".join(r.stdout.split())
    for name, text in COMMANDS.items():
        assert f"{name} {' '.join(text.split()[:4])}" in listed  # the name, then its one-line help
    # what keeps `gptforge --help` instant: the heavy libraries are imported by commands, not by --help
    probe = ("import sys; from gptforge.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
             "print(sorted(m for m in ('torch', 'numpy', 'tiktoken', 'gptforge.train') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


@pytest.mark.parametrize("argv", [["--debug", "data", "info", "nope"], ["data", "info", "nope", "--debug"],
                                  ["data", "--debug", "info", "nope"]])
def test_debug_anywhere_shows_the_traceback(argv):
    r = run(*argv)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UserError" in r.stderr


def test_usage_mistakes_are_one_line():
    for argv in (["pretrian"], ["pretrain", "--no-such-flag"], ["sample"]):
        r = run(*argv)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("gptforge"), r.stderr


def test_corpus_command_writes_documented_file(tmp_path):
    out = tmp_path / "s.txt"
    assert main(["data", "corpus", "shakespeare", "--out", str(out)]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == shakespeare.SHA256


def test_prepare_and_info(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("hello world\n" * 50)
    assert main(["data", "prepare", "--corpus", str(tmp_path / "c.txt"), "--tokenizer", "char",
                 "--out", str(tmp_path / "d")]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path / "d"), "--tokenizer", str(tmp_path / "d")]) == 0
    assert '"gptforge.shards"' in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "empty", "utf8", "mismatch"])
def test_user_errors_are_one_line_exit_2(tmp_path, case):
    (tmp_path / "ok.txt").write_text("abc\n" * 10)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.txt").write_bytes(b"abc\n\xc3(\n")
    prep = ["data", "prepare", "--tokenizer", "char", "--out", str(tmp_path / "o"), "--corpus"]
    args, expect = {
        "missing": (prep + [str(tmp_path / "nope.txt")], "nope.txt: no such file or directory"),
        "empty": (prep + [str(tmp_path / "empty.txt")], "corpus is empty"),
        "utf8": (prep + [str(tmp_path / "bad.txt")], "bad.txt: invalid UTF-8 at byte offset 4"),
        "mismatch": (None, "different tokenizer"),
    }[case]
    if case == "mismatch":
        assert run(*prep, str(tmp_path / "ok.txt")).returncode == 0
        (tmp_path / "other.txt").write_text("xyz\n")
        assert run("data", "prepare", "--tokenizer", "char", "--out", str(tmp_path / "t"),
                   "--corpus", str(tmp_path / "other.txt"), "--val-fraction", "0.5").returncode == 0
        args = ["data", "info", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "t")]
    r = run(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptforge: error: ") and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_errors_replace_accepts_bad_bytes_and_debug_shows_traceback(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"abc\n" * 10 + b"\xff\n")
    base = ["data", "prepare", "--tokenizer", "char", "--out", str(tmp_path / "o"),
            "--corpus", str(tmp_path / "bad.txt")]
    r = run("--debug", *base)
    assert r.returncode != 0 and "Traceback" in r.stderr
    assert run(*base, "--errors", "replace").returncode == 0


def test_help_and_flag_mistakes_never_import_torch():
    """Issue 27.18: `--help` took 2.7-3.7 s for nine commands (torch was imported to build their
    parsers), and a mistyped flag cost the same before its error."""
    from gptforge.cli import COMMANDS

    script = f"""
import contextlib, io, sys
from gptforge.cli import build_parser
for command in {list(COMMANDS)!r}:
    for argv in ([command, "--help"], [command, "--no-such-flag"]):
        with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), \\
                contextlib.redirect_stderr(io.StringIO()):
            build_parser(command).parse_args(argv)
print(sorted(m for m in ("torch", "numpy", "fastapi") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
