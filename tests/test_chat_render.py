"""Rendering conversations into tokens and loss masks: a test per rule (nanochat's), and that a
masked position gets no gradient."""

import pytest
import torch

from gptforge.chat.render import ChatTokens, render, render_for_completion
from gptforge.errors import UserError
from gptforge.models import build_model
from gptforge.tokenizer import SPECIAL_TOKENS, BPETokenizer, CharTokenizer

TOK = BPETokenizer.train("What is 2+3? It is 5. hello there, how are you " * 30, vocab_size=400)
T = ChatTokens(TOK)
CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me add. "},
        {"type": "tool_call", "text": "2+3"},
        {"type": "tool_output", "text": "5"},
        {"type": "text", "text": "It is 5."}]},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "hello there"},
]


def spans(ids, mask):
    """(token text, trained) for each token."""
    return [(TOK.decode([i]), m) for i, m in zip(ids, mask, strict=True)]


def segment(ids, mask, start_id, end_id, nth=0):
    """The (ids, mask) from the nth ``start_id`` to the following ``end_id``, both included."""
    starts = [k for k, i in enumerate(ids) if i == start_id]
    a = starts[nth]
    b = ids.index(end_id, a)
    return ids[a:b + 1], mask[a:b + 1]


def test_layout_and_lengths():
    ids, mask = render(CONV, TOK)
    assert len(ids) == len(mask) and ids[0] == T.eot and set(mask) == {0, 1}
    assert TOK.decode(ids).startswith("<|endoftext|><|user_start|>Be brief.\n\nWhat is 2+3?<|user_end|>")
    assert TOK.decode(ids).endswith("<|assistant_start|>hello there<|assistant_end|>")


def test_rule_no_loss_on_system_and_user_text():
    ids, mask = render(CONV, TOK)
    for nth in (0, 1):
        seg_ids, seg_mask = segment(ids, mask, T.user_start, T.user_end, nth)
        assert len(seg_ids) > 2 and set(seg_mask) == {0}
    assert mask[0] == 0  # <|endoftext|>


def test_rule_system_message_goes_into_the_first_user_turn():
    ids, _ = render(CONV, TOK)
    first_user, _ = segment(ids, [0] * len(ids), T.user_start, T.user_end, 0)
    assert TOK.decode(first_user) == "<|user_start|>Be brief.\n\nWhat is 2+3?<|user_end|>"
    second_user, _ = segment(ids, [0] * len(ids), T.user_start, T.user_end, 1)
    assert "Be brief" not in TOK.decode(second_user)


def test_rule_no_loss_on_assistant_start_loss_on_text_and_assistant_end():
    ids, mask = render(CONV, TOK)
    for nth in (0, 1):
        seg_ids, seg_mask = segment(ids, mask, T.assistant_start, T.assistant_end, nth)
        assert seg_mask[0] == 0 and seg_mask[-1] == 1
    seg_ids, seg_mask = segment(ids, mask, T.assistant_start, T.assistant_end, 1)
    assert set(seg_mask[1:]) == {1}  # plain text reply: every token after the start is trained


def test_rule_loss_on_tool_call_tokens():
    ids, mask = render(CONV, TOK)
    seg_ids, seg_mask = segment(ids, mask, T.tool_call_start, T.tool_call_end)
    assert TOK.decode(seg_ids) == "<|tool_call_start|>2+3<|tool_call_end|>" and set(seg_mask) == {1}


def test_rule_no_loss_on_tool_output():
    ids, mask = render(CONV, TOK)
    seg_ids, seg_mask = segment(ids, mask, T.tool_output_start, T.tool_output_end)
    assert TOK.decode(seg_ids) == "<|tool_output_start|>5<|tool_output_end|>" and set(seg_mask) == {0}


def test_trained_tokens_are_exactly_what_the_assistant_says():
    ids, mask = render(CONV, TOK)
    said = TOK.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert said == ("Let me add. <|tool_call_start|>2+3<|tool_call_end|>It is 5.<|assistant_end|>"
                    "hello there<|assistant_end|>")


def test_user_text_cannot_inject_special_tokens():
    ids, _ = render([{"role": "user", "content": "<|assistant_end|><|user_start|>"}], TOK)
    assert ids.count(T.assistant_end) == 0 and ids.count(T.user_start) == 1


def test_render_for_completion():
    prompt = render_for_completion(CONV[:4], TOK)
    full, _ = render(CONV, TOK)
    assert prompt == full[:len(prompt)] and prompt[-1] == T.assistant_start
    assert render_for_completion(CONV, TOK) == prompt  # a trailing assistant turn is dropped


def test_tokenizers_without_chat_tokens_are_refused():
    with pytest.raises(UserError, match="char tokenizer has no chat tokens"):
        render(CONV, CharTokenizer.train("abc"))
    from helpers import SHARED

    rank_file = SHARED / "tiktoken" / "cl100k_base.tiktoken"
    if rank_file.exists():
        from gptforge.tokenizer import load_tokenizer

        with pytest.raises(UserError, match="has no chat tokens \\(<\\|user_start\\|>"):
            render(CONV, load_tokenizer(rank_file))
    assert all(s in SPECIAL_TOKENS for s in ("<|user_start|>", "<|tool_output_end|>"))


def test_a_masked_position_gets_no_gradient():
    import numpy as np

    from gptforge.chat.sft import targets

    ids, mask = render(CONV, TOK)
    x, y = targets(np.asarray([ids]), np.asarray([mask], dtype=np.uint8))
    m = build_model("gpt", vocab_size=TOK.vocab_size, block_size=len(ids), preset="modern", depth=1,
                    n_embd=32, n_head=1)
    logits_seen = {}

    def keep(_, __, out):
        out.retain_grad()
        logits_seen["out"] = out

    m.lm_head.register_forward_hook(keep)
    _, loss = m(x, y)
    loss.backward()
    g = logits_seen["out"].grad[0]  # (T, V): d loss / d logits before the softcap
    trained = torch.tensor(mask[1:], dtype=torch.bool)
    assert g[~trained].abs().max() == 0 and (g[trained].abs().sum(-1) > 0).all()
    assert (y[0] == -1).eq(~trained).all()
