"""LoRA through PEFT (gptforge.models.lora, `gptforge sft --lora`): only the adapters train and hold
optimizer state, a resumed run continues bit for bit, the merged model computes what the adapter
model does (and what PEFT's own loader builds from the checkpoint folder), and export and chat load
the merged model. Tiny models, a few steps; nothing is downloaded."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # peft and transformers never reach the network

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import CHAT_TEXT, randomize, save_checkpoint_dir, tiny_chat_base  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from test_sft import convs  # noqa: E402

from gptforge import checkpoint as ckpt  # noqa: E402
from gptforge.chat.assistant import respond  # noqa: E402
from gptforge.chat.sft import sft_data  # noqa: E402
from gptforge.cli import main  # noqa: E402
from gptforge.errors import UserError  # noqa: E402
from gptforge.models import build_model, model_config  # noqa: E402
from gptforge.models.lora import ADAPTER_WEIGHTS, add_lora, has_lora, parse_lora  # noqa: E402
from gptforge.tokenizer import BPETokenizer  # noqa: E402
from gptforge.train import Logger, make_config, resume_config, train  # noqa: E402

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny pretrained GPT (modern preset, one block) with a BPE tokenizer that has the chat tokens."""
    return tiny_chat_base(tmp_path_factory.mktemp("base"), 64)


def lora_config(run, out, **kw):
    return make_config({"task": "sft", "data": "inline", "init_from": str(run), "out": str(out), "depth": 1,
                        "block_size": 64, "batch_size": 4, "max_steps": 6, "eval_interval": 3,
                        "eval_tokens": 0, "threads": 1, "lr": 1e-2, "warmup_steps": 1, "decay_steps": 6,
                        "model": {"n_embd": 32, "n_head": 1}, "lora": "r=4,alpha=8", **kw})


def test_lora_sft_trains_only_the_adapters_and_resumes_bit_exactly(base, tmp_path):
    run, tok = base
    tok_json = ckpt.find_checkpoint(run) / "tokenizer.json"

    def data(c):
        return sft_data(c, tok, tok_json, convs(100), convs(10, seed=1))[0]

    # optimizer muon in the config: the adapters still get AdamW (gptforge.train.optim)
    cfg = lora_config(run, tmp_path / "a", optimizer="muon")
    assert cfg.lora == "r=4,alpha=8,targets=c_attn,c_proj,c_fc"
    train(cfg, data=data(cfg), logger=Logger("none"))
    ck = ckpt.find_checkpoint(tmp_path / "a")
    frozen = load_file(ck / "model.safetensors")
    start = load_file(ckpt.find_checkpoint(run) / "model.safetensors")
    assert frozen.keys() == start.keys() and all(torch.equal(frozen[k], start[k]) for k in start)
    adapter = load_file(ck / ADAPTER_WEIGHTS)
    # one block: c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, each an A (r, in) and a B (out, r)
    assert len(adapter) == 8 and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert adapter["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, 32)
    assert all(adapter[k].abs().max() > 0 for k in adapter if ".lora_B." in k)  # B starts at 0: it trained
    opt = torch.load(ck / "optimizer.pt", weights_only=True)["optimizers"]
    assert len(opt) == 1 and "exp_avg_sq" in opt[0]["state"][0]  # one AdamW
    assert sorted(tuple(s["exp_avg"].shape) for s in opt[0]["state"].values()) == \
        sorted(tuple(v.shape) for v in adapter.values())  # state for the adapters, none for the rest

    half = lora_config(run, tmp_path / "b", optimizer="muon", max_steps=3)
    train(half, data=data(half), logger=Logger("none"))
    again = resume_config(tmp_path / "b", {"max_steps": 6})
    assert again.lora == cfg.lora
    train(again, resume=True, data=data(again), logger=Logger("none"))

    def losses(d):
        return [r["train_loss"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text()
                                              .splitlines()) if "train_loss" in r]

    assert len(losses("a")) == 6 and losses("a") == losses("b")
    resumed = load_file(ckpt.find_checkpoint(tmp_path / "b") / ADAPTER_WEIGHTS)
    assert all(torch.equal(resumed[k], adapter[k]) for k in adapter)
    with pytest.raises(UserError, match="lora cannot change in a resumed run"):
        resume_config(tmp_path / "b", {"lora": "r=8"})


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_merged_model_computes_what_the_adapter_model_does(preset, tmp_path):
    """gpt2: biases and a tied embedding/head (which must stay tied and untouched); modern: neither.
    The reference is PEFT's own loader on the plain base model and the checkpoint folder."""
    tok = BPETokenizer.train(CHAT_TEXT, vocab_size=320)
    torch.manual_seed(0)
    model = randomize(build_model("gpt", tok.vocab_size, 32, preset=preset, depth=2, n_embd=32, n_head=4))
    base_run = save_checkpoint_dir(tmp_path / "base", model, tok)
    add_lora(model, parse_lora("r=4,alpha=8,targets=c_attn,mlp.c_proj"))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        f"transformer.h.{i}.{m}.lora_{ab}.default.weight" for i in range(2)
        for m in ("attn.c_attn", "mlp.c_proj") for ab in "AB"]
    with torch.no_grad():  # B starts at zero: give the adapters something to add
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.3)
    tok_file = tok.save(tmp_path / "tok")
    state = ckpt.RunState(step=1, model_config=model_config(model), tokenizer=tok.identity())
    ck = ckpt.save_checkpoint(tmp_path / "lora", model, [], state, tokenizer_json=tok_file)

    adapter_model, _ = ckpt.load_checkpoint(ck, merge_lora=False)
    merged, _ = ckpt.load_checkpoint(ck)
    plain, _ = ckpt.load_checkpoint(base_run)
    reference = peft.PeftModel.from_pretrained(ckpt.load_checkpoint(base_run)[0], str(ck)).eval()
    assert has_lora(adapter_model) and not has_lora(merged)
    assert type(merged.transformer.h[0].attn.c_attn) is torch.nn.Linear
    if preset == "gpt2":
        assert merged.lm_head.weight is merged.transformer.wte.weight
    torch.manual_seed(1)
    idx = torch.randint(0, tok.vocab_size, (3, 32))
    with torch.no_grad():
        want, ref = model.eval()(idx)[0], reference(idx)[0]
        got_adapter, got_merged, got_plain = adapter_model(idx)[0], merged(idx)[0], plain(idx)[0]
    assert torch.equal(got_adapter, want) and torch.equal(ref, want)
    torch.testing.assert_close(got_merged, want, atol=1e-5, rtol=0)
    assert (got_plain - want).abs().max() > 0.1  # the adapters change what the model computes
    untouched = [k for k in plain.state_dict() if "c_attn" not in k and "mlp.c_proj" not in k]
    assert all(torch.equal(merged.state_dict()[k], plain.state_dict()[k]) for k in untouched)


def test_lora_refusals(base, tmp_path, capsys):
    tok = BPETokenizer.train(CHAT_TEXT, vocab_size=320)
    gpt2 = build_model("gpt", tok.vocab_size, 32, preset="gpt2", depth=1, n_embd=32, n_head=4)
    with pytest.raises(UserError, match="lm_head shares its weights"):
        add_lora(gpt2, parse_lora("targets=lm_head"))
    with pytest.raises(UserError, match=r"targets=q_proj: no Linear layer .* c_attn, c_fc, c_proj, lm_head"):
        add_lora(gpt2, parse_lora("targets=c_attn,q_proj"))
    run = base[0]
    out = str(tmp_path / "x")
    assert main(["sft", "--ckpt", str(run), "--data", "identity", "--out", out, "--lora", "r=0"]) == 2
    assert "--lora r=0: r must be in [1, 4096]" in capsys.readouterr().err
    assert main(["sft", "--ckpt", str(run), "--data", "identity", "--out", out, "--lora", "r=4,c_fc"]) == 2
    assert "expected r=RANK,alpha=A[,targets=NAME,...], not 'c_fc'" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(run.parent / "data"), "--out", out, "--lora", "r=4"]) == 2
    assert "lora trains adapters on a trained model; it needs init_from" in capsys.readouterr().err


def test_export_and_chat_load_the_merged_model(base, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    run = tmp_path / "sft"
    assert main(["sft", "--ckpt", str(base[0]), "--data", "arithmetic:40", "--lora", "r=4,alpha=8",
                 "--out", str(run), "--max-steps", "3", "--eval-interval", "3", "--lr", "0.01",
                 "--progress", "log", "--threads", "1"]) == 0
    assert "of them trained: LoRA r=4,alpha=8,targets=c_attn,c_proj,c_fc" in capsys.readouterr().out
    adapter_model, _ = ckpt.load_checkpoint(run, merge_lora=False)
    tok = base[1]
    # chat: the reply is the adapter model's greedy reply
    assert main(["chat", "--ckpt", str(run), "-p", "What is 2 + 3?", "--temperature", "0",
                 "--max-new-tokens", "12"]) == 0
    convo = [{"role": "user", "content": "What is 2 + 3?"}]
    want = "".join(p.text for p in respond(adapter_model, tok, convo, 12, temperature=0) if p.kind == "text")
    assert capsys.readouterr().out == want + "\n"
    # export: a Hugging Face folder with the merged weights, loaded by transformers
    assert main(["export", "--ckpt", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.manual_seed(2)
    idx = torch.randint(0, tok.vocab_size, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, adapter_model(idx)[0], atol=1e-4, rtol=0)
