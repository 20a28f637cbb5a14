"""Curriculum sampling (gptforge/train/curriculum.py): on a table fed losses that behave like noise,
learnt text and learnable text, the sampler draws noise and learnt chunks less than uniform and
learnable ones more; its draws are deterministic and its table round-trips through a checkpoint; a
real run with it trains, saves the table and resumes bit for bit; the default sampler is untouched."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import mfu_cache, shakespeare_char_shards  # noqa: F401 (mfu_cache: a fixture)

from gptforge import checkpoint as ckpt
from gptforge.cli import main
from gptforge.errors import UserError
from gptforge.train import make_config, resume_config, train
from gptforge.train.curriculum import CurriculumBatches

NOISE, LEARNT, LEARNABLE = 0, 1, 2


def simulate(sampler: CurriculumBatches, kinds: np.ndarray, batches: int, seed: int = 0) -> np.ndarray:
    """Feed ``sampler`` ``batches`` micro-batches of made-up losses (nats per token) by chunk kind:
    noise stays at 4.0, learnt text at 1.0, learnable text falls from 4.0 towards 1.0 with every
    visit (what training on it does); each with per-window scatter of 0.3. Returns how often each
    chunk was drawn over the last half of the batches."""
    rng = np.random.default_rng(seed)
    trained = np.zeros(len(kinds))
    drawn = np.zeros(len(kinds))
    for i in range(batches):
        chunks, _ = sampler.draw(i)
        base = np.where(kinds[chunks] == NOISE, 4.0,
                        np.where(kinds[chunks] == LEARNT, 1.0, 1.0 + 3.0 * np.exp(-trained[chunks] / 15)))
        sampler.record(chunks, base + rng.normal(0, 0.3, len(chunks)))
        np.add.at(trained, chunks, 1)
        if i >= batches // 2:
            np.add.at(drawn, chunks, 1)
    return drawn


def make_sampler(C=120, B=8, T=16, chunk=4, uniform=0.5, seed=3):
    tokens = np.zeros(C * chunk * T + 1, dtype=np.uint16)
    return CurriculumBatches(tokens, B, T, seed, chunk, uniform)


def test_noise_and_learnt_chunks_are_drawn_less_learnable_ones_more():
    kinds = np.arange(120) % 3  # 40 chunks of each kind, interleaved
    s = make_sampler()
    drawn = simulate(s, kinds, 600)
    share = {k: drawn[kinds == k].sum() / drawn.sum() for k in (NOISE, LEARNT, LEARNABLE)}
    # uniform would give each kind 1/3
    assert share[NOISE] < 0.30 and share[LEARNT] < 0.30 and share[LEARNABLE] > 0.40, share
    # and the probabilities say the same at the end: learnable above 1/C, noise below
    p = s.probabilities()
    assert p.sum() == pytest.approx(1.0)
    assert p[kinds == LEARNABLE].mean() > 1 / 120 > p[kinds == NOISE].mean()
    # the uniform share is a floor: no chunk ever drops below u / C
    assert p.min() >= 0.5 / 120 - 1e-12


def test_uniform_share_one_is_uniform_and_an_empty_table_is_uniform():
    kinds = np.arange(120) % 3
    s = make_sampler(uniform=1.0)
    simulate(s, kinds, 100)
    assert np.allclose(s.probabilities(), 1 / 120)
    assert np.allclose(make_sampler().probabilities(), 1 / 120)


def test_windows_lie_inside_their_chunks_and_draws_are_deterministic():
    a, b = make_sampler(), make_sampler()
    for i in range(50):
        ca, oa = a.draw(i)
        cb, ob = b.draw(i)
        assert np.array_equal(ca, cb) and np.array_equal(oa, ob)
        L = a.chunk_tokens
        assert np.all(oa >= ca * L) and np.all(oa + a.T + 1 <= (ca + 1) * L + 1)
    assert not np.array_equal(a.draw(0)[1], a.draw(1)[1])


def test_table_round_trips_through_a_checkpoint_file(tmp_path):
    from safetensors.numpy import save_file

    kinds = np.arange(120) % 3
    s = make_sampler()
    simulate(s, kinds, 200)
    save_file(s.state_arrays(), str(tmp_path / ckpt.SAMPLER_FILE))
    fresh = make_sampler()
    fresh.load_state_arrays(ckpt.read_sampler_state(tmp_path))
    assert np.array_equal(fresh.probabilities(), s.probabilities())
    assert all(np.array_equal(x, y) for x, y in zip(fresh.draw(999), s.draw(999), strict=True))
    with pytest.raises(ValueError, match="chunk_windows"):
        CurriculumBatches(s.tokens, 8, 16, 3, chunk=2).load_state_arrays(s.state_arrays())  # 240 chunks
    assert ckpt.read_sampler_state(tmp_path / "nothing-here") is None


def test_loss_is_the_mean_loss_and_records_only_batches_it_handed_out():
    torch.manual_seed(0)
    from gptforge.models import build_model

    model = build_model("gpt", vocab_size=50, block_size=16, depth=1, n_embd=16, n_head=1)
    tokens = np.random.default_rng(0).integers(0, 50, size=40 * 16 + 1).astype(np.uint16)
    s = CurriculumBatches(tokens, 4, 16, 0, chunk=2, uniform=0.5)
    x, y = s.get(0)
    loss, _ = s.loss(model, (x, y))
    _, mean = model(x, y)
    assert loss.item() == pytest.approx(mean.item(), rel=1e-5)
    assert s.visits.sum() == 4
    s.loss(model, (x.clone(), y))  # not the batch it handed out (and that one is used up): no record
    s.loss(model, (x, y))
    assert s.visits.sum() == 4


# --- real training runs --------------------------------------------------------------------------
TINY = {"arch": "gpt", "preset": "modern", "depth": 1, "model": {"n_embd": 32, "n_head": 2},
        "batch_size": 4, "block_size": 32, "eval_tokens": 512, "warmup_steps": 2, "threads": 1,
        "progress": "none", "lr": 1e-2, "sampling": "curriculum", "chunk_windows": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return shakespeare_char_shards(tmp_path_factory.mktemp("shards"), 100_000)


pytestmark = pytest.mark.usefixtures("mfu_cache")  # the MFU probe measured once for this module


def losses(run) -> dict[int, float]:
    recs = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in recs if "train_loss" in r}


def test_a_curriculum_run_trains_saves_its_table_and_resumes_exactly(data, tmp_path):
    kw = dict(TINY, data=str(data), max_steps=40, decay_steps=40, eval_interval=20)
    full = train(make_config(kw, {"out": str(tmp_path / "full")}))
    trace = losses(tmp_path / "full")
    assert np.mean([trace[s] for s in range(36, 41)]) < np.mean([trace[s] for s in range(1, 6)]) - 0.5
    assert full["val_loss"] < 3.0  # char vocab ~60: ln V ~ 4.1 untrained
    table = ckpt.read_sampler_state(Path(full["checkpoint"]))
    assert table["visits"].sum() == 40 * 4  # every row trained on was recorded

    train(make_config(kw, {"out": str(tmp_path / "part"), "max_steps": 25}))
    resumed = train(resume_config(tmp_path / "part", {"max_steps": 40}), resume=True)
    assert losses(tmp_path / "part") == trace  # exact float equality: the table came back too
    assert resumed["val_loss"] == full["val_loss"]


def test_default_sampling_is_unchanged_and_curriculum_errors_are_user_errors(data, tmp_path):
    cfg = make_config({**TINY, "sampling": "random", "data": str(data), "out": str(tmp_path / "r"),
                       "max_steps": 2})
    assert make_config({}).sampling == "random"
    s = train(cfg)
    assert not (Path(s["checkpoint"]) / ckpt.SAMPLER_FILE).exists()
    with pytest.raises(UserError, match="curriculum chunk"):
        train(make_config(TINY, {"data": str(data), "out": str(tmp_path / "big"), "chunk_windows": 10**5}))
    # inspect batch cannot recompute a curriculum batch: says so in one line
    c = make_config(TINY, {"data": str(data), "out": str(tmp_path / "c"), "max_steps": 1})
    train(c)
    assert main(["inspect", "batch", "--run", str(tmp_path / "c"), "--step", "0"]) == 2
