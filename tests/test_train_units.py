"""Pretraining building blocks without a training run: config, batches, optimizers, schedule,
checkpoints (atomicity, corruption), evaluation against known losses."""

import math
import re

import numpy as np
import pytest
import torch

from gptforge import checkpoint as ckpt
from gptforge.config import load_toml, overrides
from gptforge.errors import UserError
from gptforge.models import GPTConfig, build_model
from gptforge.train.batches import PretrainBatches, batch_index, batch_offsets, eval_offsets, get_batch
from gptforge.train.config import make_config
from gptforge.train.optim import build_optimizers, lr_multiplier, replan_steps, split_params


# --- config ---------------------------------------------------------------------------------------
def test_config_layers_toml_then_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('arch = "gpt"\ndepth = 3\nlr = 1\nmax_time = 60\n[model]\nn_embd = 64\nn_head = 2\n')
    cfg = make_config(load_toml(f), {"depth": "2", "model": {"n_head": "4"}})
    assert cfg.depth == 2 and cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.max_time == 60.0
    assert cfg.model == {"n_embd": 64, "n_head": 4}  # merged key by key, typed by GPTConfig


@pytest.mark.parametrize("text, match", [
    ("max_step = 5\n", "unknown key 'max_step'; did you mean 'max_steps'"),
    ("depth = 'four'\n", "depth='four': expected an integer >= 1"),
    ("lr = [1\n", "not a valid TOML file"),
    ("optimizer = 'sgd'\n", "optimizer='sgd': expected one of adamw, muon"),
    ("batch_size = 0\n", "batch_size=0: expected an integer >= 1"),
    ("compile = 2\n", "compile=2: expected a boolean"),
    ("max_time = nan\n", "max_time=nan: expected a finite number"),
    ("lr = inf\n", "lr=inf: expected a finite number"),
    ("seed = -1\n", "seed=-1: expected an integer >= 0"),
    ("[model]\nbias = 'maybe'\n", "bias='maybe': expected a boolean"),
    ("[model]\nnorm_eps = nan\n", "norm_eps=nan: expected a finite number > 0"),
    ("[model]\nrope_theta = 0\n", "rope_theta=0: expected a finite number > 0"),
    ("[model]\nn_embed = 64\n", "unknown key 'n_embed'; did you mean 'n_embd'"),
])
def test_config_errors_are_one_line_user_errors(tmp_path, text, match):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(UserError, match=re.escape(match)) as e:
        make_config(load_toml(f))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, value", [
    ("true", True), ("False", False), ("YES", True), ("no", False), ("1", True), ("0", False), ("On", True)])
def test_bool_spellings(text, value):
    assert overrides(GPTConfig, [f"bias={text}"]) == {"bias": value}


def test_overrides_typed_by_declared_field():
    assert overrides(GPTConfig, ["n_embd=128", "dropout=0.1", "norm=rmsnorm", "logit_softcap=none",
                                 "n_kv_head=null", "rope_theta=500"]) == {
        "n_embd": 128, "dropout": 0.1, "norm": "rmsnorm", "logit_softcap": None, "n_kv_head": None,
        "rope_theta": 500.0}
    for item, match in (("n_embd", "expected KEY=VALUE"), ("n_embd=1.5", "expected an integer"),
                        ("bias=none", "expected a boolean"), ("norm=batch", "expected one of layernorm")):
        with pytest.raises(UserError, match=match):
            overrides(GPTConfig, [item])


def test_false_bools_and_no_softcap_reach_the_built_model():
    """The bug of issue 10: '--model bias=False' used to be the truthy string 'False'."""
    cfg = make_config({"data": "x", "depth": 1, "model": overrides(GPTConfig, [
        "bias=false", "qk_norm=False", "logit_softcap=none", "n_embd=64", "n_head=2"])})
    m = build_model("gpt", vocab_size=50, block_size=16, preset="modern", depth=cfg.depth, **cfg.model)
    assert not any(n.endswith("bias") for n, _ in m.named_parameters())
    assert m.config.qk_norm is False and m.config.logit_softcap is None and m.config.bias is False
    x = torch.randint(0, 50, (1, 16))
    torch.nn.init.normal_(m.lm_head.weight, std=50.0)  # huge logits: a softcap of 15 would clip them
    assert m(x)[0].abs().max() > 15
    # and the other way round: biases and QK-norm when asked
    m2 = build_model("gpt", vocab_size=50, block_size=16, preset="modern", depth=1,
                     **overrides(GPTConfig, ["bias=yes", "n_embd=64", "n_head=2"]))
    assert any(n.endswith("bias") for n, _ in m2.named_parameters()) and m2.config.qk_norm is True


# --- data -----------------------------------------------------------------------------------------
def test_batches_are_pure_functions_of_seed_and_index():
    toks = np.arange(1000, dtype=np.uint16)
    a = batch_offsets(1000, 4, 16, seed=1, index=7, sampling="random")
    assert np.array_equal(a, batch_offsets(1000, 4, 16, seed=1, index=7, sampling="random"))
    assert not np.array_equal(a, batch_offsets(1000, 4, 16, seed=2, index=7, sampling="random"))
    assert a.min() >= 0 and a.max() <= 1000 - 16 - 1
    x, y = get_batch(toks, a, 16)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[:, 0], torch.from_numpy(a))


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_two_ranks_see_the_batches_of_two_micro_steps(sampling):
    src = PretrainBatches(np.arange(5000, dtype=np.uint16), 2, 8, 5, sampling)  # what the loop reads
    for step in (0, 3):
        single = [src.get(batch_index(step, m, accum=2, rank=0, world=1))[0] for m in (0, 1)]
        ranks = [src.get(batch_index(step, 0, accum=1, rank=r, world=2))[0] for r in (0, 1)]
        for s, r in zip(single, ranks, strict=True):
            assert torch.equal(s, r)
        assert not torch.equal(ranks[0], ranks[1])  # ranks read different data


def test_sequential_windows_tile_the_split_in_order():
    src = PretrainBatches(np.arange(10_000, dtype=np.uint16), 2, 8, 0, "sequential")
    rows = torch.cat([src.get(batch_index(s, m, 2, r, 2))[0]
                      for s in range(3) for m in range(2) for r in range(2)])
    assert torch.equal(rows.flatten(), torch.arange(rows.numel()))  # disjoint, adjacent, in order


def test_eval_subset_is_fixed_and_spread():
    off = eval_offsets(10_000, 100, 1000)
    assert len(off) == 10 and off[0] == 0 and off[-1] == 10_000 - 100 - 1
    assert np.array_equal(off, eval_offsets(10_000, 100, 1000))
    with pytest.raises(ValueError):
        eval_offsets(50, 100, 1000)


def test_eval_on_the_whole_split_scores_each_target_once():
    n, T = 10_050, 100
    off = eval_offsets(n, T, 0)
    targets = np.concatenate([np.arange(o + 1, o + T + 1) for o in off])
    assert len(np.unique(targets)) == len(targets)  # no target twice
    assert targets.min() == 1 and n - 1 - targets.max() < T  # all but the last < T tokens


# --- optimizers and schedule ----------------------------------------------------------------------
def test_muon_gets_hidden_matrices_adamw_the_rest():
    torch.manual_seed(0)
    m = build_model("gpt", vocab_size=64, block_size=16, preset="modern", depth=2, n_embd=64, n_head=2)
    hidden, io, rest = split_params(m)
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[id(p)] for p in io} == {"transformer.wte.weight", "lm_head.weight"}
    assert hidden and all(p.dim() == 2 for p in hidden)
    assert len(hidden) + len(io) + len(rest) == len(list(m.parameters()))
    opts = build_optimizers(m, make_config({"optimizer": "muon"}))
    assert [type(o).__name__ for o in opts] == ["AdamW", "MuonFloat32"]  # on the CPU; torch's on CUDA
    assert isinstance(opts[1], torch.optim.Muon)
    assert {id(p) for p in opts[1].param_groups[0]["params"]} == {id(p) for p in hidden}


def test_adamw_decays_only_matrices_and_tied_weights_once():
    m = build_model("gpt", vocab_size=64, block_size=16, preset="gpt2", depth=1, n_embd=32, n_head=2)
    (opt,) = build_optimizers(m, make_config({"optimizer": "adamw", "weight_decay": 0.1}))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() < 2 for p in no_decay["params"])
    n = len(decay["params"]) + len(no_decay["params"])
    assert n == len(list(m.parameters()))  # wte/lm_head tied: one tensor, listed once


def test_lr_schedules():
    cos = make_config({"schedule": "cosine", "warmup_steps": 10, "min_lr_frac": 0.1})
    assert lr_multiplier(0, cos, 100) == pytest.approx(1 / 11)
    assert lr_multiplier(9, cos, 100) == pytest.approx(10 / 11)
    assert lr_multiplier(10, cos, 100) == pytest.approx(1.0)
    assert lr_multiplier(55, cos, 100) == pytest.approx(0.55)  # halfway down the cosine
    assert lr_multiplier(100, cos, 100) == pytest.approx(0.1) == lr_multiplier(500, cos, 100)
    wsd = make_config({"schedule": "wsd", "warmup_steps": 0, "warmdown_frac": 0.2, "min_lr_frac": 0.0})
    assert [lr_multiplier(s, wsd, 100) for s in (0, 79, 80, 90, 99)] == pytest.approx([1, 1, 1, 0.5, 0.05])


def test_replan_steps_moves_only_a_flat_schedule():
    timed = make_config({"schedule": "wsd", "warmdown_frac": 0.2, "schedule_time": 60.0})
    # 30 steps in 20 s, 0.5 s a step from now: 77 more fill the 60 s with a 3% margin
    assert replan_steps(30, 100, timed, 20.0, 0.5) == 30 + int(40 / 0.515) == 107
    assert replan_steps(30, 100, timed, 20.0, 0.25) == 30 + int(40 / 0.2575) == 185
    assert replan_steps(30, 100, timed, 70.0, 0.5) == 31  # over time: one more step, then the end
    assert replan_steps(80, 100, timed, 20.0, 0.5) == 100  # the warmdown (steps 80-99) has begun
    assert replan_steps(30, 100, make_config({"schedule": "wsd"}), 20.0, 0.5) == 100  # no time schedule


# --- checkpoints ----------------------------------------------------------------------------------
def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    m = build_model("gpt", vocab_size=32, block_size=8, preset="gpt2", depth=1, n_embd=16, n_head=2)
    opts = build_optimizers(m, make_config({"optimizer": "muon"}))
    x = torch.randint(0, 32, (2, 8))
    m(x, x)[1].backward()
    for o in opts:
        o.step()
    return m, opts


def _state(step):
    return ckpt.RunState(step=step, tokens=step * 16)


def test_checkpoint_roundtrip_and_retention(tmp_path):
    m, opts = _model_and_opt()
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, m, opts, _state(step), is_best=step == 2, keep_last=2)
    kept = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert kept == ["best", "latest", "step_000002", "step_000003", "step_000004"]
    assert ckpt.find_checkpoint(tmp_path).name == "step_000004"
    assert ckpt.find_checkpoint(tmp_path, "best").name == "step_000002"
    m2, opts2 = _model_and_opt(seed=1)
    ck = ckpt.find_checkpoint(tmp_path)
    ckpt.load_weights(m2, ck)
    ckpt.load_optimizer_state(opts2, ck)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(opts[1].state_dict()["state"][0]["momentum_buffer"],
                       opts2[1].state_dict()["state"][0]["momentum_buffer"])


def test_crash_while_saving_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    m, opts = _model_and_opt()
    ckpt.save_checkpoint(tmp_path, m, opts, _state(1))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, m, opts, _state(2))
    monkeypatch.undo()
    assert ckpt.find_checkpoint(tmp_path).name == "step_000001"
    assert ckpt.read_trainer_state(ckpt.find_checkpoint(tmp_path)).step == 1
    ckpt.save_checkpoint(tmp_path, m, opts, _state(2))  # the leftover temp dir is no obstacle
    assert ckpt.find_checkpoint(tmp_path).name == "step_000002"
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "ckpt").iterdir())


@pytest.mark.parametrize("victim, damage, match", [
    ("trainer.json", b"{\"format\": \"gptforge.checkp", "trainer.json: corrupt checkpoint metadata"),
    ("model.safetensors", b"\x00" * 20, "model.safetensors: corrupt weights file"),
    ("optimizer.pt", b"PK\x03\x04garbage", "optimizer.pt: corrupt or unsafe optimizer state"),
])
def test_corrupt_checkpoint_errors_name_the_file(tmp_path, victim, damage, match):
    m, opts = _model_and_opt()
    ck = ckpt.save_checkpoint(tmp_path, m, opts, _state(1))
    (ck / victim).write_bytes(damage)
    load = {"trainer.json": lambda: ckpt.read_trainer_state(ck),
            "model.safetensors": lambda: ckpt.load_weights(m, ck),
            "optimizer.pt": lambda: ckpt.load_optimizer_state(opts, ck)}[victim]
    with pytest.raises(UserError, match=match) as e:
        load()
    assert str(ck / victim) in str(e.value)


def test_incompatible_weights_and_missing_checkpoints(tmp_path):
    m, opts = _model_and_opt()
    ck = ckpt.save_checkpoint(tmp_path, m, opts, _state(1))
    other = build_model("gpt", vocab_size=32, block_size=8, preset="gpt2", depth=1, n_embd=32, n_head=2)
    with pytest.raises(UserError, match="do not fit the model"):
        ckpt.load_weights(other, ck)
    with pytest.raises(UserError, match="no checkpoint here"):
        ckpt.find_checkpoint(tmp_path / "ckpt" / "step_000001" / "..")  # the ckpt dir itself: no pointer
    with pytest.raises(UserError, match="no such run"):
        ckpt.find_checkpoint(tmp_path / "nope")


# --- evaluation: known losses -----------------------------------------------------------------------
def test_uniform_model_has_loss_ln_v_and_bpb_from_bytes():
    from gptforge.train.evaluate import evaluate, window_batches
    from gptforge.train.session import Dist

    V, T = 10, 8
    m = build_model("bigram", vocab_size=V, block_size=T)
    torch.nn.init.zeros_(m.wte.weight)  # uniform predictions: exactly ln V nats on every token
    toks = np.random.default_rng(0).integers(0, V, 500).astype(np.uint16)
    token_bytes = torch.tensor([0, 1, 1, 1, 2, 2, 3, 3, 4, 1])  # token 0 is "special"
    off = eval_offsets(len(toks), T, 200)
    batches = window_batches(toks, off, T, 4, "cpu")
    loss, bpb = evaluate(m, batches, token_bytes, torch.autocast("cpu", enabled=False), Dist("cpu"))
    assert loss == pytest.approx(math.log(V), rel=1e-6)
    y = np.concatenate([toks[o + 1:o + T + 1] for o in off])
    text = y[y != 0]
    assert bpb == pytest.approx(len(text) * math.log2(V) / token_bytes.numpy()[text].sum(), rel=1e-6)


def test_muon_float32_matches_torch_muon():
    """Our CPU Muon (Newton-Schulz in float32) takes torch.optim.Muon's step up to bf16 rounding,
    with the same state, so a checkpoint's optimizer state loads into either."""
    from gptforge.train.optim import MuonFloat32

    torch.manual_seed(0)
    for shape in ((64, 32), (32, 96)):
        w0 = torch.randn(shape)
        ours, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
        o = MuonFloat32([ours], lr=0.02, weight_decay=0.1, momentum=0.95)
        r = torch.optim.Muon([ref], lr=0.02, weight_decay=0.1, momentum=0.95)
        for _ in range(3):
            g = torch.randn(shape)
            ours.grad, ref.grad = g.clone(), g.clone()
            o.step()
            r.step()
        d_ours, d_ref = ours.detach() - w0, ref.detach() - w0
        cos = torch.nn.functional.cosine_similarity(d_ours.flatten(), d_ref.flatten(), dim=0)
        assert cos > 0.999 and (d_ours - d_ref).norm() / d_ref.norm() < 0.02
        assert torch.equal(o.state[ours]["momentum_buffer"], r.state[ref]["momentum_buffer"])
        r.load_state_dict(o.state_dict())  # the same state layout


def test_a_time_bound_run_logs_no_unreachable_step_total(capsys):
    """The RL stage runs on a wall-clock budget with an unreachable step budget (10^9): its log lines
    said "step 39/1000000000 ... ETA 160699:16:54". With max_time the ETA is the time left and the
    line says the run is time-bound; a run whose steps end first keeps its step total."""
    import time as _time

    from gptforge.train.log import Logger

    rec = {"train_loss": 1.0, "lr": 1e-3, "tokens_per_s": 10.0, "mfu": None, "time_s": 0.1}
    log = Logger("log", interval=0.0)
    log.start(10**9, 0, max_time=5.0)
    _time.sleep(0.05)
    log.step({**rec, "step": 1})
    line = capsys.readouterr().out
    assert "step 1 (time-bound)" in line and "1000000000" not in line
    assert 0 < log.eta(1) <= 5.0
    log = Logger("log", interval=0.0)
    log.start(3, 0, max_time=3600.0)
    _time.sleep(0.05)
    log.step({**rec, "step": 1})
    assert "step 1/3" in capsys.readouterr().out and log.eta(1) < 1.0
