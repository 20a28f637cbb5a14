"""`gptforge import`: a Hugging Face model folder as a gptforge run directory (module named after the
command; loaded by name with importlib, as every command is)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("import", help=help,
                       description="A local Hugging Face folder (GPT2LMHeadModel, NanoChatForCausalLM) as a "
                                   "run directory that sample, chat, serve, eval, export, sft --ckpt take.")
    p.add_argument("source", help="Hugging Face model folder (config.json + model.safetensors)")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer to use instead of the folder's (a .tiktoken file, a gptforge "
                        "tokenizer.json)")
    p.add_argument("--add-chat-tokens", action="store_true",
                   help="add gptforge's chat tokens to a tokenizer that lacks them (GPT-2's), with new "
                        "embedding rows (the mean of the others) for SFT to train")
    p.set_defaults(func=run)


def run(args) -> int:
    from gptforge.export import import_hf
    from gptforge.tokenizer import SPECIAL_TOKENS, load_tokenizer

    ck = import_hf(args.source, args.out, args.tokenizer, args.add_chat_tokens)
    print(f"wrote {ck}; try: gptforge sample --ckpt {args.out} --prompt 'Hello'")
    if not set(SPECIAL_TOKENS) <= set(load_tokenizer(ck).special_tokens):
        print("note: its tokenizer has no chat tokens, which sft and chat need; import again with "
              "--add-chat-tokens to add them")
    return 0
