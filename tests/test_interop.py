"""`gptforge export --format hf|gguf` and `gptforge import`, checked against the libraries users load them
with: transformers / tokenizers (the hf folder, its tokenizer.json and chat template) and gguf's own
reader (llama.cpp's Python package). Models have random weights; nothing is downloaded."""

import json
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network, even by accident

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import randomize, save_checkpoint_dir, shared_file  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from gptforge.chat.render import render, render_for_completion  # noqa: E402
from gptforge.cli import main  # noqa: E402
from gptforge.engine import generate, load_for_inference  # noqa: E402
from gptforge.errors import UserError  # noqa: E402
from gptforge.export import export_gguf, export_hf, gguf_name  # noqa: E402
from gptforge.models import build_model  # noqa: E402
from gptforge.tokenizer import EOT, BPETokenizer, load_tokenizer  # noqa: E402
from gptforge.tokenizer.hf import from_hf_tokenizer, hf_tokenizer_json, token_str  # noqa: E402

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")

BLOCK = 48
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fuzz_strings(n: int = 2000, seed: int = 0) -> list[str]:
    """``n`` strings of up to 80 characters: ASCII letters, digits, quotes and whitespace runs (what the
    split patterns treat specially), plus characters drawn from the first 12k code points and a few
    multi-byte ones (accents, Cyrillic, CJK, emoji with modifiers)."""
    r = random.Random(seed)
    alphabet = list(" \n\t\r'0123456789aZsdtmlvre .,!?") + list("ÄéЖ日本語👋🏽‍") + \
        [chr(r.randrange(32, 0x2FFF)) for _ in range(300)]
    return ["".join(r.choice(alphabet) for _ in range(r.randrange(0, 80))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    from gptforge.data.shakespeare import corpus_text

    return BPETokenizer.train(corpus_text("train")[:200_000] + "".join(fuzz_strings(300, seed=1)),
                              vocab_size=700)


def gpt(tok, preset: str, **kw):
    torch.manual_seed(0)
    return randomize(build_model("gpt", tok.vocab_size, BLOCK, preset=preset, depth=2, n_embd=32, n_head=4,
                                 **kw))


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "What is 2+3?"},
     {"role": "assistant", "content": [
         {"type": "text", "text": "Let me add. "}, {"type": "tool_call", "text": "2+3"},
         {"type": "tool_output", "text": "5"}, {"type": "text", "text": "It is 5."}]},
     {"role": "user", "content": "  Größe naïve café\n\n日本語 👋🏽 "},
     {"role": "assistant", "content": "hello there\n"}],
    [{"role": "system", "content": "You answer in verse."}, {"role": "assistant", "content": "Speak."},
     {"role": "user", "content": "I'm sure you'll say they've done it"}],
]


# --- hf ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_hf_export_loads_in_transformers_with_our_logits(tok, preset, tmp_path):
    ours = gpt(tok, preset)
    run = save_checkpoint_dir(tmp_path, ours, tok)
    assert main(["export", "--ckpt", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == ("GPT2LMHeadModel" if preset == "gpt2" else "NanoChatForCausalLM")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["bos_token_id"] == cfg["eos_token_id"] == tok.eot_id
    if preset == "gpt2":
        assert cfg["n_ctx"] == BLOCK  # llama.cpp's converter reads it
    torch.manual_seed(5)
    idx = torch.randint(0, tok.vocab_size, (3, BLOCK))
    with torch.no_grad():
        ref, (logits, _) = hf(idx).logits, ours(idx)
    assert ref.std() > 0.5
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
    # greedy: ours by argmax over the whole sequence at each step, theirs by generate()
    prompt = idx[:2, :6]
    seq = prompt
    with torch.no_grad():
        for _ in range(24):
            seq = torch.cat([seq, ours(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, min_new_tokens=24,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(seq, theirs)
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.eot_id, tok.special_tokens["<|assistant_end|>"]]
    # and back: the folder imports as the same model and tokenizer
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back, back_tok, _ = load_for_inference(str(tmp_path / "back"))
    assert back.config == ours.config and back_tok.special_tokens == tok.special_tokens
    assert [back_tok.encode(t) for t in fuzz_strings(200)] == [tok.encode(t) for t in fuzz_strings(200)]
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


def test_hf_tokenizer_encodes_like_ours(tok, tmp_path):
    export_hf(gpt(tok, "gpt2"), tok, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = fuzz_strings()
    got = theirs(texts, add_special_tokens=False)["input_ids"]
    assert got == [tok.encode(t) for t in texts]
    assert sum(map(len, got)) > 40_000  # the strings are long enough to exercise the merges
    assert theirs.eos_token_id == theirs.bos_token_id == tok.eot_id
    assert theirs.decode(tok.encode("Größe 日本 👋🏽")) == "Größe 日本 👋🏽"
    assert theirs.convert_tokens_to_ids(list(tok.special_tokens)) == list(tok.special_tokens.values())


def test_hf_tokenizer_of_an_openai_rank_file(tmp_path):
    # no recorded merges: they are derived from the ranks (merges_from_ranks)
    ref = load_tokenizer(shared_file("tiktoken", "r50k_base.tiktoken"))
    theirs = tokenizers.Tokenizer.from_str(json.dumps(hf_tokenizer_json(ref)))
    texts = fuzz_strings(500, seed=2)
    assert [e.ids for e in theirs.encode_batch(texts, add_special_tokens=False)] == \
        [ref.encode(t) for t in texts]


def test_chat_template_renders_our_ids(tok, tmp_path):
    export_hf(gpt(tok, "gpt2"), tok, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)

    def ids(conv, **kw):
        out = theirs.apply_chat_template(conv, tokenize=True, **kw)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    for conv in CONVERSATIONS:
        if conv[-1]["role"] == "assistant":
            assert ids(conv) == render(conv, tok)[0]
        else:
            assert ids(conv, add_generation_prompt=True) == render_for_completion(conv, tok)
    with pytest.raises(Exception, match="unknown role"):
        ids([{"role": "tool", "content": "x"}])


def test_hf_export_refusals(tok, tmp_path):
    from gptforge.tokenizer import CharTokenizer

    with pytest.raises(UserError, match="fits neither"):
        export_hf(gpt(tok, "modern", mlp="swiglu"), tok, tmp_path / "a")
    with pytest.raises(UserError, match="needs a BPE tokenizer"):
        export_hf(gpt(tok, "gpt2"), CharTokenizer.train("abc"), tmp_path / "b")
    (tmp_path / "f").write_text("x")
    run = save_checkpoint_dir(tmp_path, gpt(tok, "gpt2"), tok)
    assert main(["export", "--ckpt", str(run), "--format", "hf", "--out", str(tmp_path / "f")]) == 2
    assert main(["export", "--ckpt", str(tmp_path / "run"), "--format", "hf", "--dtype", "bfloat16",
                 "--out", str(tmp_path / "g")]) == 2


# --- gguf ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gguf_export_reads_back(tok, dtype, tmp_path):
    ours = gpt(tok, "gpt2", tie_embeddings=False)
    run = save_checkpoint_dir(tmp_path, ours, tok)
    out = tmp_path / "m.gguf"
    assert main(["export", "--ckpt", str(run), "--format", "gguf", "--dtype", dtype, "--out", str(out)]) == 0
    r = gguf.GGUFReader(out)
    field = lambda k: r.fields[k].contents()
    assert field("general.architecture") == "gpt2"
    assert field("general.file_type") == (1 if dtype == "float16" else 0)
    c = ours.config
    assert [field(f"gpt2.{k}") for k in ("context_length", "embedding_length", "feed_forward_length",
                                         "block_count", "attention.head_count")] == \
        [BLOCK, c.n_embd, c.mlp_hidden, c.n_layer, c.n_head]
    assert field("gpt2.attention.layer_norm_epsilon") == pytest.approx(c.norm_eps)
    tensors = {t.name: t for t in r.tensors}
    sd = ours.state_dict()
    assert set(tensors) == {gguf_name(k) for k in sd}
    assert {"token_embd.weight", "position_embd.weight", "output.weight", "blk.1.ffn_down.bias"} \
        <= set(tensors)
    for name, v in sd.items():
        t = tensors[gguf_name(name)]
        want = v.numpy()
        assert list(reversed(t.shape.tolist())) == list(want.shape)  # GGUF lists dims innermost first
        half = dtype == "float16" and want.ndim == 2
        assert t.tensor_type == (gguf.GGMLQuantizationType.F16 if half else gguf.GGMLQuantizationType.F32)
        got = np.asarray(t.data).reshape(want.shape).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-3 if half else 0, atol=1e-3 if half else 0)
    # the tokenizer: byte-level strings by id, special tokens as control tokens, merges in rank order
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "llama-bpe"  # the gpt4 split pattern
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == tok.vocab_size
    specials = {i: s for s, i in tok.special_tokens.items()}
    assert tokens == [specials.get(i) or token_str(tok.decode_bytes([i])) for i in range(tok.vocab_size)]
    types = field("tokenizer.ggml.token_type")
    assert [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL] == sorted(specials)
    assert field("tokenizer.ggml.merges") == hf_tokenizer_json(tok)["model"]["merges"]
    assert field("tokenizer.ggml.bos_token_id") == field("tokenizer.ggml.eos_token_id") == tok.eot_id
    assert field("tokenizer.ggml.eot_token_id") == tok.special_tokens["<|assistant_end|>"]
    assert "<|assistant_start|>" in field("tokenizer.chat_template")


def test_gguf_tied_embeddings_and_refusals(tok, tmp_path):
    export_gguf(gpt(tok, "gpt2"), tok, tmp_path / "tied.gguf")
    names = {t.name for t in gguf.GGUFReader(tmp_path / "tied.gguf").tensors}
    assert "output.weight" not in names and "token_embd.weight" in names  # llama.cpp reuses token_embd
    with pytest.raises(UserError, match="llama.cpp has no architecture for this GPT.*positional='rope'"):
        export_gguf(gpt(tok, "modern"), tok, tmp_path / "m.gguf")
    odd = BPETokenizer.train("hello world " * 20, vocab_size=300, pattern=r"\w+|\s+|[^\w\s]+")
    with pytest.raises(UserError, match="no pre-tokenizer for the split pattern"):
        export_gguf(randomize(build_model("gpt", 300, 8, preset="gpt2", depth=1, n_embd=8, n_head=2)), odd,
                    tmp_path / "o.gguf")
    assert not list(tmp_path.glob(".*.tmp"))


LLAMA_CPP_MISSING = ("llama_cpp is not importable: install llama-cpp-python (it builds llama.cpp from "
                     "source, several CPU-minutes) to run llama.cpp on the gguf export")


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_export_runs_in_llama_cpp_with_our_greedy_tokens(tok, tied, tmp_path):
    """llama.cpp itself (through llama-cpp-python) loads the f32 export, tokenizes a prompt to our ids, and
    its greedy continuation is our engine's for 32 tokens; its logits along the way are ours."""
    llama_cpp = pytest.importorskip("llama_cpp", reason=LLAMA_CPP_MISSING)
    run = save_checkpoint_dir(tmp_path, gpt(tok, "gpt2", tie_embeddings=tied), tok)
    out = tmp_path / "m.gguf"
    assert main(["export", "--ckpt", str(run), "--format", "gguf", "--out", str(out)]) == 0
    model, _, _ = load_for_inference(str(run))
    text = "Citizen: we are poor"
    prompt = tok.encode(text)
    assert 6 <= len(prompt) <= BLOCK - 32
    want = generate(model, [prompt], 32, temperature=0)[0]
    f32 = llama_cpp.GGML_TYPE_F32  # the KV cache too (llama.cpp's default is f16)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=BLOCK, n_batch=BLOCK, n_threads=1, n_threads_batch=1,
                          type_k=f32, type_v=f32, logits_all=True, verbose=False)
    assert llm.n_vocab() == tok.vocab_size and llm.token_eos() == tok.eot_id
    assert llm.tokenize(text.encode(), add_bos=False) == prompt
    got = []
    for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        got.append(t)
        if len(got) == 32:
            break
    assert got == want
    assert llm.detokenize(got) == tok.decode_bytes(got)
    # llama.cpp's logits at every position, ours to 0.1% of the largest (it rounds GELU through an f16 table;
    # measured: 2e-4): prompt + continuation (the last token not yet fed), then 48 random tokens at once
    torch.manual_seed(1)
    noise = torch.randint(0, tok.vocab_size, (BLOCK,)).tolist()
    for fed, seq in ((True, prompt + want[:-1]), (False, noise)):
        if not fed:
            llm.reset()
            llm.eval(seq)
        with torch.no_grad():
            ours = model(torch.tensor([seq]))[0][0]
        theirs = torch.from_numpy(np.asarray(llm.scores[:len(seq)]))
        assert llm.n_tokens == len(seq) and ours.std() > 1.0
        torch.testing.assert_close(theirs, ours, atol=1e-3 * ours.abs().max().item(), rtol=0)


# --- import --------------------------------------------------------------------------------------
def hf_gpt2_folder(tok, path):
    """A randomly initialised GPT2LMHeadModel saved by transformers, with our tokenizer in HF form."""
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=BLOCK, n_embd=32, n_layer=2,
                                  n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    torch.manual_seed(3)
    hf = randomize(transformers.GPT2LMHeadModel(cfg))
    hf.save_pretrained(path)
    (path / "tokenizer.json").write_text(json.dumps(hf_tokenizer_json(tok)))
    return hf


def test_import_round_trips_and_finetunes(tok, tmp_path):
    hf_gpt2_folder(tok, tmp_path / "src")
    run = tmp_path / "run"
    assert main(["import", str(tmp_path / "src"), "--out", str(run)]) == 0
    model, got_tok, _ = load_for_inference(str(run))
    assert got_tok.encode("To be, or not") == tok.encode("To be, or not")
    assert main(["export", "--ckpt", str(run), "--format", "hf", "--out", str(tmp_path / "back")]) == 0
    a = load_file(tmp_path / "src" / "model.safetensors")
    b = load_file(tmp_path / "back" / "model.safetensors")
    a = {k: v for k, v in a.items() if not k.endswith(".attn.bias")}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["import", str(tmp_path / "src"), "--out", str(run)]) == 2  # never over a run
    assert main(["sft", "--ckpt", str(run), "--data", "identity", "--out", str(tmp_path / "sft"),
                 "--max-steps", "5", "--block-size", str(BLOCK), "--batch-size", "2", "--eval-interval", "5",
                 "--progress", "none", "--threads", "1"]) == 0
    assert main(["sample", "--ckpt", str(tmp_path / "sft"), "--prompt", "Hi", "--max-new-tokens", "4"]) == 0


def test_import_gpt2_vocabulary_from_openai_files(tmp_path):
    # GPT-2's released encoder.json + vocab.bpe (a folder as OpenAI ships them): the tokenizer is r50k
    src = tmp_path / "gpt2"
    src.mkdir()
    (src / "encoder.json").write_text(shared_file("gpt2", "encoder.json").read_text())
    ours = from_hf_tokenizer(src)
    ref = load_tokenizer(shared_file("tiktoken", "r50k_base.tiktoken"))
    assert ours.vocab_size == 50257 and ours.eot_id == 50256
    texts = fuzz_strings(300, seed=3)
    assert [ours.encode(t) for t in texts] == [ref.encode(t) for t in texts]
    with pytest.raises(UserError, match="no tokenizer.json or vocab.json"):
        from_hf_tokenizer(tmp_path)
    # the same vocabulary as transformers writes GPT-2's tokenizer.json (a plain ByteLevel pre-tokenizer)
    lines = shared_file("gpt2", "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]  # after "#version"
    fast = transformers.GPT2TokenizerFast(vocab=json.loads((src / "encoder.json").read_text()),
                                          merges=[tuple(line.split()) for line in lines if line])
    fast.save_pretrained(tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    assert saved["pre_tokenizer"]["type"] == "ByteLevel"
    again = from_hf_tokenizer(tmp_path / "hf")
    assert again.eot_id == 50256 and [again.encode(t) for t in texts] == [ref.encode(t) for t in texts]
    # ids that do not follow the merges would encode differently under tiktoken's rule: refused
    saved["model"]["merges"][5], saved["model"]["merges"][900] = saved["model"]["merges"][900], \
        saved["model"]["merges"][5]
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"merge 6 \('Ġt', 'he'\) gives id 262, below the previous merge's"):
        from_hf_tokenizer(tmp_path / "hf")


def test_import_adds_chat_tokens_for_sft(tmp_path, capsys):
    # a GPT-2-like tokenizer: <|endoftext|> only, so SFT has no chat tokens to train on
    from gptforge.data.shakespeare import corpus_text

    plain = BPETokenizer.train(corpus_text("train")[:50_000], vocab_size=400, special_tokens=(EOT,))
    hf = hf_gpt2_folder(plain, tmp_path / "src")
    assert main(["import", str(tmp_path / "src"), "--out", str(tmp_path / "plain")]) == 0
    assert "--add-chat-tokens" in capsys.readouterr().out
    sft = ["sft", "--data", "identity", "--max-steps", "5", "--block-size", str(BLOCK), "--batch-size", "2",
           "--eval-interval", "5", "--progress", "none", "--threads", "1"]
    assert main([*sft, "--ckpt", str(tmp_path / "plain"), "--out", str(tmp_path / "s1")]) == 2
    assert "no chat tokens" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "src"), "--out", str(tmp_path / "run"), "--add-chat-tokens"]) == 0
    assert "added 8 chat tokens" in capsys.readouterr().out
    model, tok, _ = load_for_inference(str(tmp_path / "run"))
    assert tok.vocab_size == model.config.vocab_size == 408
    assert tok.special_tokens["<|assistant_end|>"] == 403 and tok.encode("To be") == plain.encode("To be")
    wte = model.transformer.wte.weight
    torch.testing.assert_close(wte[400:], wte[:400].mean(0).expand(8, -1))
    idx = torch.randint(0, 400, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0][..., :400], hf(idx).logits, atol=1e-4, rtol=0)
    assert main([*sft, "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "s2")]) == 0


def test_lmeval_scores_the_hf_export_as_gptforge_eval_does(tmp_path, monkeypatch):
    """lm-evaluation-harness loads the export by path (model and tokenizer: no gptforge code) and its
    per-option log-likelihoods and accuracy on ARC-Easy rows equal `gptforge eval`'s scorer's."""
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from gptforge.eval.core import evaluate_core
    from gptforge.eval.lmeval import write_task_configs
    from gptforge.models import GPT, gpt_config

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    icl, n, block = shared_file("evals", "icl"), 12, 80
    model = randomize(GPT(gpt_config("gpt2", depth=1, n_embd=32, n_head=2, block_size=block)), seed=4)
    tok = load_tokenizer(shared_file("tiktoken", "r50k_base.tiktoken"))
    ours = evaluate_core(model, tok, icl, tasks=("arc_easy",), limit=n, shots=0, bos=False, split="lmeval",
                         records=True)["tasks"]["arc_easy"]
    names = write_task_configs(tmp_path / "tasks", ["arc_easy"], icl, tmp_path / "datasets")
    lm = HFLM(pretrained=str(export_hf(model, tok, tmp_path / "hf")), batch_size=16, max_length=block,
              device="cpu")
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    res = simple_evaluate(model=lm, tasks=names, num_fewshot=0, limit=n, log_samples=True,
                          task_manager=manager)
    theirs = sorted(res["samples"]["gf_arc_easy"], key=lambda s: s["doc_id"])
    for ex, sample in zip(ours["examples"], theirs, strict=True):
        their_ll = [float(r[0][0] if isinstance(r[0], tuple | list) else r[0]) for r in sample["resps"]]
        np.testing.assert_allclose(ex["logprobs"], their_ll, atol=1e-4, rtol=0)
    assert ours["accuracy_sum"] == res["results"]["gf_arc_easy"]["acc,none"]
