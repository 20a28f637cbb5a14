"""The sampling engine, `gptforge sample`, and the model.bin + numpy run.py export."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import randomize, save_checkpoint_dir

from gptforge.cli import main
from gptforge.engine import Slots, ToolUse, generate, generate_stream, sample_next
from gptforge.errors import UserError
from gptforge.export import export_model
from gptforge.models import build_model
from gptforge.tokenizer import CharTokenizer

RUN_PY = Path(__file__).resolve().parents[1] / "gptforge" / "run.py"
TOK = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ,.:\n")
PRESETS = [("gpt2", {}), ("modern", {}), ("modern", {"n_kv_head": 1, "mlp": "swiglu"}),
           ("modern", {"n_head": 4, "n_kv_head": 2, "n_embd": 64})]


def gpt(preset, block_size=24, **kw):
    """A small GPT with random weights (init would zero some paths), so outputs are not degenerate."""
    return randomize(build_model("gpt", vocab_size=TOK.vocab_size, block_size=block_size, preset=preset,
                                 depth=2, **kw))


@pytest.mark.parametrize("preset,kw", PRESETS)
def test_kv_cache_greedy_equals_full_forward(preset, kw):
    m = gpt(preset, **kw)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]  # ragged; runs past block_size 24
    with_cache = generate(m, prompts, 30, temperature=0)
    without = generate(m, prompts, 30, temperature=0, use_cache=False)
    assert with_cache == without
    assert [len(r) for r in with_cache] == [30, 30, 30]
    # ragged batching gives each row what it gets alone
    assert generate(m, [prompts[1]], 30, temperature=0)[0] == with_cache[1]


def test_ragged_rows_decode_under_bf16_autocast():
    """A bf16 run's RL samples its replies under autocast: keys and values come out in bf16 and go
    into the float32 KV cache at each row's own positions (index_put, which does not cast)."""
    m = gpt("modern")
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rows = generate(m, prompts, 12, temperature=0)
    assert [len(r) for r in rows] == [12, 12, 12]
    assert all(0 <= t < TOK.vocab_size for r in rows for t in r)


@pytest.mark.parametrize("preset,kw", PRESETS[:2])
def test_each_cached_step_matches_full_forward_logits(preset, kw):
    m = gpt(preset, **kw)
    seq = torch.randint(0, TOK.vocab_size, (2, 20))
    slots = Slots(m, 2)
    with torch.no_grad():
        full, _ = m(seq)
        steps = [torch.cat([slots.add(seq[i, :5].tolist()) for i in range(2)])]  # (2, V) each
        steps += [slots.step(seq[:, t].tolist()) for t in range(5, 20)]
    for t, logits in zip(range(5, 21), steps, strict=True):
        assert torch.allclose(logits, full[:, t - 1], atol=1e-4)


def run_slots(m, prompts, starts, n_new, max_rows=3):
    """Greedy decoding through Slots, prompt i joining at step starts[i] and leaving after n_new[i]
    tokens (so rows join and leave mid-batch and rows move when one leaves). Returns the new tokens."""
    slots, live, out, step = Slots(m, max_rows), [], [[] for _ in prompts], 0
    while step == 0 or live or any(s >= step for s in starts):
        for i, s in enumerate(starts):
            if s == step:
                live.append(i)
                out[i].append(int(slots.add(prompts[i])[0].argmax()))
        for r in range(len(live) - 1, -1, -1):  # leave, as the batcher does: the last row moves in
            if len(out[live[r]]) == n_new[live[r]]:
                slots.remove(r, live)
        if live:
            logits = slots.step([out[i][-1] for i in live])
            for r, i in enumerate(live):
                out[i].append(int(logits[r].argmax()))
        step += 1
    return out


@pytest.mark.parametrize("preset,kw", [*PRESETS, ("lstm", {})])
def test_rows_joining_and_leaving_each_get_what_they_get_alone(preset, kw):
    """Continuous batching (Slots): every row, whenever it joins and whoever leaves, decodes exactly
    what it decodes alone (a KV cache with ragged positions; the LSTM runs rows one by one)."""
    if preset == "lstm":
        m = randomize(build_model("lstm", vocab_size=TOK.vocab_size, block_size=24))
    else:
        m = gpt(preset, **kw)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16, 1, 2, 3, 4]]
    n_new = [10, 6, 12, 5]
    got = run_slots(m, prompts, starts=[0, 0, 3, 6], n_new=n_new)
    alone = [generate(m, [p], n, temperature=0)[0] for p, n in zip(prompts, n_new, strict=True)]
    assert got == alone


def test_slots_refuse_what_does_not_fit():
    m = gpt("modern")
    slots = Slots(m, 2)
    slots.add([1, 2], copies=2)
    with pytest.raises(ValueError, match="max_rows"):
        slots.add([1])
    slots.remove(0)
    with pytest.raises(ValueError, match="prompt of 25 tokens"):
        slots.add([1] * 25)
    assert len(slots) == 1 and slots.length(0) == 2


def test_sampling_filters():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    # temperature 1: frequencies follow softmax
    freq = torch.bincount(sample_next(logits, 1.0, generator=g), minlength=5).float() / 20000
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.015)
    # top-k keeps exactly the k most likely
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    # top-p keeps the smallest set whose mass reaches p: p(0)=0.53 < 0.7 <= p(0)+p(1)=0.73
    assert set(sample_next(logits, 1.0, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert sample_next(logits[:3], 0.0).tolist() == [0, 0, 0]
    # low temperature sharpens towards greedy
    cold = sample_next(logits, 0.05, generator=g)
    assert (cold == 0).float().mean() > 0.99


@pytest.mark.parametrize("tiny", [1e-46, 5e-324, 1e-320, 1e-40])
def test_settings_below_float32s_range_are_greedy_or_top_1(tiny):
    """A positive temperature or top_p that is 0 (or subnormal) in float32 gives finite probabilities:
    the argmax, as greedy decoding does; top_k at its bounds (1, the vocabulary, beyond it) too."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g)
    logits[:, 7] = float("-inf")  # a banned token
    top = logits.argmax(-1)
    assert torch.equal(sample_next(logits, tiny, generator=g), top)
    assert torch.equal(sample_next(logits, 1.0, top_p=tiny, generator=g), top)
    assert torch.equal(sample_next(logits, 1.0, top_k=1, generator=g), top)
    for k in (None, 49, 50, 51, 1 << 24):
        assert (sample_next(logits, tiny, top_k=k, top_p=tiny, generator=g) == top).all()
        assert (sample_next(logits, 2.0, top_k=k, generator=g) != 7).all()


def test_seeded_sampling_is_reproducible_and_stop_tokens_end_rows():
    m = gpt("modern")
    a = generate(m, [[1, 2]] * 3, 20, temperature=1.0, top_k=10, seed=7)
    assert a == generate(m, [[1, 2]] * 3, 20, temperature=1.0, top_k=10, seed=7)
    assert a == generate(m, [[1, 2]] * 3, 20, temperature=1.0, top_k=10, seed=7, use_cache=False)
    greedy = generate(m, [[1, 2]], 20, temperature=0)[0]
    stop = greedy[5]
    cut = generate(m, [[1, 2]], 20, temperature=0, stop_tokens=[stop])[0]
    assert cut == greedy[: greedy.index(stop)] and stop not in cut


def test_stream_yields_token_by_token():
    m = gpt("gpt2")
    steps = list(generate_stream(m, [[1, 2, 3], [4]], 4, temperature=0))
    # each prompt is prefilled in one pass, whatever its length: both rows yield from the first step
    assert len(steps) == 4 and all(None not in s for s in steps)


@pytest.mark.parametrize("kw,msg", [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
                                    ({"top_p": 1.5}, "top_p"), ({"top_k": 0}, "top_k")])
def test_invalid_settings(kw, msg):
    with pytest.raises(UserError, match=msg):
        generate(gpt("gpt2"), [[1]], 3, **kw)


@pytest.mark.parametrize("arch", ["bigram", "mlp", "lstm"])
def test_other_models_generate_with_their_state(arch):
    torch.manual_seed(0)
    m = build_model(arch, vocab_size=TOK.vocab_size, block_size=32).eval()
    out = generate(m, [[1, 2, 3], [4]], 20, temperature=0)
    assert len(out[0]) == 20 and out == generate(m, [[1, 2, 3], [4]], 20, temperature=0, use_cache=False)


def test_lstm_state_carries_the_whole_history():
    torch.manual_seed(0)
    m = build_model("lstm", vocab_size=TOK.vocab_size, block_size=4).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    prompt = [1, 2, 3]
    out = generate(m, [prompt], 12, temperature=0)[0]  # the state sees more than block_size tokens
    seq = prompt + out
    with torch.no_grad():
        full, _ = m(torch.tensor([seq]))
    assert full[0, len(prompt) - 1:-1].argmax(-1).tolist() == out


def test_gpt2_greedy_matches_transformers_generate():
    from gptforge.models.hf import to_hf

    m = gpt("gpt2", block_size=64)
    hf = to_hf(m).eval()
    prompt = [5, 6, 7, 8]
    ours = generate(m, [prompt], 40, temperature=0)[0]
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False,
                         pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == theirs


@pytest.mark.parametrize("preset,kw", PRESETS[:3])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_and_numpy_runner_match_engine(tmp_path, preset, kw, dtype):
    m = gpt(preset, **kw)
    out = tmp_path / "model.bin"
    info = export_model(m, TOK, out, dtype=dtype)
    assert info["bytes"] == out.stat().st_size
    if dtype == "bfloat16":  # the runner sees bf16-rounded weights; so must the engine
        m.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in m.state_dict().items()})
    want = generate(m, [TOK.encode("hello world")], 40, temperature=0, stop_tokens=[TOK.eot_id])[0]
    r = subprocess.run([sys.executable, str(RUN_PY), str(out), "--prompt", "hello world",
                        "--max-new-tokens", "40", "--temperature", "0", "--ids"],
                       capture_output=True, text=True, check=True)
    assert json.loads(r.stdout) == want


def test_export_rejects_non_gpt(tmp_path):
    with pytest.raises(UserError, match="GPT models only"):
        export_model(build_model("bigram", vocab_size=TOK.vocab_size, block_size=8), TOK, tmp_path / "m.bin")


def _checkpoint(tmp_path, model):
    return save_checkpoint_dir(tmp_path, model, TOK)


def test_sample_cli_streams_and_validates(tmp_path, capsys):
    m = gpt("modern")
    run = _checkpoint(tmp_path, m)
    assert main(["sample", "--ckpt", str(run), "--prompt", "ab", "--temperature", "0",
                 "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    want = generate(m, [TOK.encode("ab")], 12, temperature=0, stop_tokens=[TOK.eot_id])[0]
    assert out == "ab" + TOK.decode(want) + "\n"
    long_prompt = "abc " * 20  # 80 tokens > block_size 24: left-truncated with a warning
    assert main(["sample", "--ckpt", str(run), "--prompt", long_prompt, "--max-new-tokens", "3",
                 "--seed", "1"]) == 0
    assert "keeping its last 24" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(run), "--temperature", "-0.5"]) == 2
    assert main(["sample", "--ckpt", str(run), "--top-p", "1.5"]) == 2
    assert main(["sample", "--ckpt", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "--temperature -0.5: expected a finite number >= 0" in err
    assert "--top-p 1.5: expected a finite number > 0 and <= 1" in err and "nope" in err


def test_export_cli_then_run_py(tmp_path):
    m = gpt("gpt2")
    run = _checkpoint(tmp_path, m)
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "m.bin")]) == 0
    r = subprocess.run([sys.executable, str(RUN_PY), str(tmp_path / "m.bin"), "--prompt", "ab",
                        "--max-new-tokens", "5", "--temperature", "0"], capture_output=True, text=True)
    assert r.returncode == 0
    want = generate(m, [TOK.encode("ab")], 5, temperature=0, stop_tokens=[TOK.eot_id])[0]
    assert r.stdout == "ab" + TOK.decode(want) + "\n"


@pytest.mark.parametrize("without_regex", [False, True])
def test_numpy_runner_with_bpe_tokenizer(tmp_path, without_regex):
    from gptforge.data.shakespeare import corpus_text
    from gptforge.tokenizer.bpe import BPETokenizer

    tok = BPETokenizer.train(corpus_text("val")[:100_000], 400)
    torch.manual_seed(0)
    m = build_model("gpt", vocab_size=tok.vocab_size, block_size=32, preset="modern", depth=1).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    export_model(m, tok, tmp_path / "m.bin")
    prompt = "ROMEO:\nWhat light, 12345 through yonder  window\n\n"
    want = generate(m, [tok.encode(prompt)], 30, temperature=0, stop_tokens=[tok.eot_id])[0]
    # the runner splits with `regex` when installed, else with an approximation in `re`
    block = "import sys; sys.modules['regex'] = None; " if without_regex else "import sys; "
    code = block + f"sys.argv = ['run.py'] + sys.argv[1:]; import runpy; runpy.run_path({str(RUN_PY)!r}, " \
                   "run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.bin"), "--prompt", prompt,
                        "--max-new-tokens", "30", "--temperature", "0", "--ids"],
                       capture_output=True, text=True, check=True)
    assert json.loads(r.stdout) == want


# Greedy tokens of the engine as of commit 3518e21 (before the decode loops were merged into one):
# a refactor must give exactly these. Prompts of different lengths, 30 new tokens (rows run past
# block_size 24), batched and one at a time, with and without the KV cache and tool calls.
PIN_PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16, 1, 2, 3, 4]]
PINNED = {
    "modern":
    [[17, 7, 7, 7, 7, 6, 8, 16, 25, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 23, 8, 7, 7, 4, 8, 7, 4, 6, 18,
      18],
     [18, 14, 12, 18, 7, 22, 7, 12, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18,
      18, 16, 16, 7, 22, 22],
     [22, 22, 22, 22, 14, 14, 4, 14, 18, 14, 18, 14, 4, 3, 17, 7, 7, 7, 7, 8, 16, 16, 16, 8, 12, 7,
      16, 7, 16, 8],
     [5, 16, 12, 23, 12, 16, 0, 16, 0, 16, 22, 18, 22, 22, 31, 16, 16, 16, 23, 0, 16, 22, 18, 22,
      23, 22, 23, 22, 18, 16]],
    "gpt2":
    [[9, 9, 9, 3, 9, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 13, 3, 3, 9, 9, 3, 3, 3, 3, 3],
     [9, 9, 9, 9, 9, 9, 9, 13, 9, 9, 13, 9, 9, 9, 9, 9, 3, 13, 9, 9, 13, 9, 9, 9, 9, 3, 3, 3, 3, 3],
     [3, 3, 9, 9, 9, 3, 9, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 13, 3, 3, 9, 9, 3, 3, 3],
     [9, 9, 9, 9, 9, 9, 3, 9, 9, 9, 9, 9, 9, 9, 9, 3, 13, 3, 3, 9, 9, 9, 3, 3, 3, 3, 3, 3, 3, 3]],
    # calls open at 7 and close at 18; the tool's answer (the call's text reversed) comes between 25 and 23
    "modern-tools":
    [[17, 7, 7, 7, 7, 6, 8, 16, 25, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 23, 8, 7, 7, 4, 8, 7, 4, 6, 18,
      25],
     [18, 14, 12, 18, 7, 22, 7, 12, 18, 25, 12, 7, 22, 23, 22, 10, 18, 7, 10, 18, 25, 10, 23, 10,
      16, 8, 19, 7, 1, 7],
     [22, 22, 22, 22, 14, 14, 4, 14, 18, 14, 18, 14, 4, 3, 17, 7, 7, 7, 7, 8, 16, 16, 16, 8, 12, 7,
      16, 7, 16, 8],
     [5, 16, 12, 23, 12, 16]],
    "lstm":
    [[22, 26, 26, 26, 6, 1, 1, 26, 1, 26, 15, 27, 27, 12, 27, 12, 12, 27, 27, 12, 27, 27, 12, 31,
      10, 10, 31, 2, 12, 31],
     [27, 27, 27, 27, 26, 26, 26, 26, 26, 26, 27, 27, 26, 27, 27, 22, 22, 27, 26, 27, 27, 27, 27,
      27, 27, 27, 27, 27, 27, 27],
     [26, 6, 26, 2, 31, 31, 27, 27, 27, 26, 26, 26, 27, 27, 4, 29, 18, 18, 18, 31, 17, 12, 12, 12,
      31, 1, 1, 29, 1, 15],
     [12, 27, 27, 27, 27, 27, 27, 27, 13, 27, 27, 27, 27, 27, 27, 27, 27, 15, 15, 15, 15, 15, 4, 31,
      31, 27, 31, 6, 15, 15]],
}


@pytest.mark.parametrize("case", PINNED)
def test_greedy_tokens_are_pinned(case):
    kw = {}
    if case == "lstm":
        torch.manual_seed(0)
        m = randomize(build_model("lstm", vocab_size=TOK.vocab_size, block_size=24))
    else:
        m = gpt(case.split("-")[0])
    if case == "modern-tools":
        tool = ToolUse(7, 18, 25, 23, decode=TOK.decode, encode=TOK.encode, run=lambda s: s[::-1] or "z")
        kw = dict(tool=tool, stop_tokens=[31, 0])
    want = PINNED[case]
    assert generate(m, PIN_PROMPTS, 30, temperature=0, **kw) == want
    if case != "lstm":  # (without its state the LSTM sees only block_size tokens: other tokens)
        assert generate(m, PIN_PROMPTS, 30, temperature=0, use_cache=False, **kw) == want
    assert [generate(m, [p], 30, temperature=0, **kw)[0] for p in PIN_PROMPTS] == want
