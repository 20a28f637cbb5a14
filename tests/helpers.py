"""Helpers shared by the test modules (pytest puts this folder on sys.path): the one place that
knows where the reference data lives, and the one weight randomiser."""

from pathlib import Path

import pytest
import torch

# ../shared/data beside the repository: reference files (developer machines and CI have it)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"reference data not found at {SHARED}")


def shared_file(*parts: str) -> Path:
    """Path to a reference file, or skip the test with the reason if it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"reference file {p} absent (only on developer machines and in CI)")
    return p


def randomize(model, seed: int = 0):
    """Every weight random and non-zero, in eval mode: norms/biases left at 1 and 0 would hide a swapped
    or dropped parameter, and the nanochat init zeroes the residual projections, which would hide the
    attention path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if p.ndim == 1 else 0.3 * noise)
    return model.eval()


def save_checkpoint_dir(tmp_path: Path, model, tok, step: int = 1) -> Path:
    """A run directory holding one checkpoint of ``model`` with tokenizer ``tok``; returns the run dir."""
    from gptforge.checkpoint import RunState, save_checkpoint
    from gptforge.models import model_config

    tok_file = tok.save(tmp_path / "tok")
    state = RunState(step=step, model_config=model_config(model), tokenizer=tok.identity())
    save_checkpoint(tmp_path / "run", model, [], state, tokenizer_json=tok_file)
    return tmp_path / "run"


CHAT_TEXT = "The cat sat on the mat. What is two and two? Four. Hello, how are you today? Fine. " * 40


def tiny_chat_base(d: Path, block_size: int):
    """A tiny GPT pretrained for 2 steps in ``d / "base"``, with a 320-id BPE that has the chat
    tokens; returns (run dir, tokenizer)."""
    from gptforge.data.shards import prepare
    from gptforge.tokenizer import BPETokenizer
    from gptforge.train import Logger, make_config, train

    tok = BPETokenizer.train(CHAT_TEXT, vocab_size=320)
    (d / "c.txt").write_text(CHAT_TEXT * 3)
    prepare(str(d / "c.txt"), tok, d / "data", workers=1, progress=False)
    train(make_config({"data": str(d / "data"), "out": str(d / "base"), "depth": 1, "block_size": block_size,
                       "batch_size": 4, "max_steps": 2, "eval_tokens": block_size, "threads": 1,
                       "model": {"n_embd": 32, "n_head": 1}}), logger=Logger("none"))
    return d / "base", tok


def shakespeare_char_shards(d: Path, n_chars: int) -> Path:
    """Char-level token shards of the first ``n_chars`` of the built-in Shakespeare, in ``d/sc``."""
    from gptforge.data import shakespeare
    from gptforge.data.shards import prepare
    from gptforge.tokenizer import CharTokenizer

    text = shakespeare.corpus_text()[:n_chars]
    (d / "corpus.txt").write_text(text)
    prepare(str(d / "corpus.txt"), CharTokenizer.train(text), d / "sc", workers=1, progress=False)
    return d / "sc"


@pytest.fixture(scope="module")
def mfu_cache(tmp_path_factory):
    """The MFU probe's cache in a temporary folder: measured once per test module, nothing written
    to the user's cache. Use with ``pytestmark = pytest.mark.usefixtures("mfu_cache")``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield
