"""`gptforge data evals` and where evaluation finds its task files. Downloads go to a loopback HTTP
server (http.server in a thread on 127.0.0.1) serving fixture files: nothing leaves the machine."""

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest
from helpers import SHARED, needs_shared

from gptforge.cli import main
from gptforge.errors import UserError
from gptforge.eval import chat, core, files
from gptforge.eval.files import EvalFile, default_data_dir, download

GOOD = b'{"question": "1+1?", "answer": "#### 2"}\n' * 50


def _zip(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(member, data)
    return buf.getvalue()


ROUTES = {"/good.jsonl": GOOD, "/evals/gsm8k/test.jsonl": GOOD, "/pkg.whl": _zip("pkg/data.jsonl", GOOD)}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/truncated.jsonl":  # announces the whole file, sends a third, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[: len(GOOD) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        body = ROUTES.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _file(base: str, route: str, data: bytes = GOOD, **kw) -> EvalFile:
    sha = hashlib.sha256(data).hexdigest()
    return EvalFile("gsm8k/test.jsonl", base + route, sha, len(data), "MIT", **kw)


def test_good_file_is_written_then_kept(server, tmp_path):
    written = download(tmp_path, [_file(server, "/good.jsonl")], progress=False)
    assert written == [tmp_path / "gsm8k/test.jsonl"]
    assert (tmp_path / "gsm8k/test.jsonl").read_bytes() == GOOD
    assert download(tmp_path, [_file(server, "/good.jsonl")], progress=False) == []  # sha256 matches: kept
    assert list(tmp_path.rglob("*.part")) == []


def test_zip_member_is_extracted(server, tmp_path):
    download(tmp_path, [_file(server, "/pkg.whl", member="pkg/data.jsonl")], progress=False)
    assert (tmp_path / "gsm8k/test.jsonl").read_bytes() == GOOD


def test_wrong_sha256_is_not_kept(server, tmp_path):
    f = _file(server, "/good.jsonl", b"other bytes")
    with pytest.raises(UserError, match="sha256 .* is not the pinned"):
        download(tmp_path, [f], progress=False)
    assert not (tmp_path / "gsm8k/test.jsonl").exists()
    assert list(tmp_path.rglob("*")) == []


def test_a_corrupt_copy_is_replaced(server, tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k/test.jsonl").write_bytes(GOOD[:-5])
    assert download(tmp_path, [_file(server, "/good.jsonl")], progress=False)
    assert (tmp_path / "gsm8k/test.jsonl").read_bytes() == GOOD


def test_truncated_download_is_an_error(server, tmp_path):
    with pytest.raises(UserError, match=rf"cut short \({len(GOOD) // 3:,} of {len(GOOD):,} bytes\)"):
        download(tmp_path, [_file(server, "/truncated.jsonl")], progress=False)
    assert list(tmp_path.rglob("*")) == []


def test_http_error_status(server, tmp_path):
    with pytest.raises(UserError, match="answered 404"):
        download(tmp_path, [_file(server, "/nope.jsonl")], progress=False)


def test_server_gone_is_one_line_offline_error(tmp_path):
    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens there any more
    with pytest.raises(UserError, match="offline") as e:
        download(tmp_path, [_file(f"http://127.0.0.1:{port}", "/good.jsonl")], progress=False, timeout=5)
    assert "\n" not in str(e.value)


def test_mirror_url_from_the_environment(server, tmp_path, monkeypatch):
    """GPTFORGE_EVALS_URL replaces every source by MIRROR/<path> (a zip source too: the mirror holds
    the file itself)."""
    monkeypatch.setenv(files.MIRROR_ENV, server + "/evals")
    f = _file("http://unreachable.invalid", "/x.whl", member="pkg/data.jsonl")
    assert download(tmp_path, [f], progress=False) == [tmp_path / "gsm8k/test.jsonl"]


def test_cli_data_evals_fills_the_cache(tmp_path, monkeypatch, capsys):
    """The real file list, from a file:// mirror holding fixture files with the pinned bytes' hashes:
    here a mirror of ../shared/data/evals itself."""
    if not (SHARED / "evals").is_dir():
        pytest.skip(f"reference data not found at {SHARED}")
    monkeypatch.setenv(files.MIRROR_ENV, (SHARED / "evals").as_uri())
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))
    assert main(["data", "evals", "--no-progress"]) == 0
    assert f"{len(files.FILES)} downloaded" in capsys.readouterr().out
    assert default_data_dir() == tmp_path / "cache"
    for f in files.FILES:
        assert (tmp_path / "cache" / f.path).stat().st_size == f.size


def test_cli_data_evals_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(files.MIRROR_ENV, "http://127.0.0.1:9")  # discard port: refused
    assert main(["data", "evals", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "offline?" in err and err.count("\n") == 1


@needs_shared
def test_pinned_hashes_match_the_reference_copies():
    for f in files.FILES:
        data = (SHARED / "evals" / f.path).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (f.sha256, f.size), f.path


def test_every_task_that_needs_a_file_has_one_pinned():
    pinned = {f.path for f in files.FILES}
    not_fetched = {"hellaswag", "hellaswag_zeroshot", "squad", "coqa"}  # 4 MiB or larger at llm-foundry
    assert {t.label for t in core.CORE_TASKS if f"icl/{t.path}" not in pinned} == not_fetched
    assert set(chat.FILES.values()) <= pinned


def test_lookup_order(tmp_path, monkeypatch):
    """The cache when it exists, else the folder beside the repository, else the cache (named in errors)."""
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(files, "beside_repo", lambda: tmp_path / "beside")
    assert default_data_dir() == tmp_path / "cache"
    (tmp_path / "beside").mkdir()
    assert default_data_dir() == tmp_path / "beside"
    (tmp_path / "cache").mkdir()
    assert default_data_dir() == tmp_path / "cache"
    monkeypatch.delenv(files.CACHE_ENV)
    assert files.cache_dir() == Path.home() / ".cache" / "gptforge" / "evals"


def test_missing_file_message_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="gptforge data evals"):
        chat.task_items("gsm8k", 3, tmp_path)
