"""`gptforge chat`: talk to a finetuned model in the terminal, or answer one prompt (-p)."""

from __future__ import annotations

import argparse
import sys

from gptforge.cli.flags import add_config_flags, flag_values
from gptforge.engine import SamplingParams
from gptforge.errors import UserError

HELP = """commands:
  /clear            forget the conversation (keeps the system message)
  /system TEXT      set the system message (empty TEXT removes it) and start over
  /temperature X    sampling temperature (0 = greedy)
  /help             this text
  /quit             leave (Ctrl-D works too)"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "chat", help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Chat with a model finetuned by `gptforge sft`. Replies stream as they are generated;\n"
                    "calculator calls are shown in brackets. When the conversation outgrows the model's\n"
                    "context, the oldest turns are dropped (and you are told).",
        epilog=HELP + "\n\nexample:\n  gptforge chat --ckpt runs/sft\n  gptforge chat --ckpt runs/sft -p "
                      "'What is 123 * 45?'   # prints the reply only")
    p.add_argument("--ckpt", required=True, help="run directory or checkpoint directory of a chat model")
    p.add_argument("--which", choices=["latest", "best"], default="best",
                   help="checkpoint of a run directory (default best, falling back to latest)")
    p.add_argument("-p", "--prompt", help="answer this one prompt and exit (stdout: the reply only)")
    p.add_argument("--system", default="", help="system message (default none)")
    add_config_flags(p, SamplingParams, defaults=SamplingParams(temperature=0.6, top_k=50))
    p.add_argument("--no-tools", action="store_true", help="do not run tool calls (the model sees no output)")
    p.add_argument("--no-cache", action="store_true", help="full forward pass every step (slower)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    from gptforge.chat.assistant import as_message, fit_context, respond
    from gptforge.chat.render import ChatTokens
    from gptforge.engine import load_for_inference

    params = SamplingParams(**{"temperature": 0.6, "top_k": 50, **flag_values(args, SamplingParams)})
    model, tok, _ = load_for_inference(args.ckpt, args.which, args.device)
    ChatTokens(tok)  # a base tokenizer without chat tokens fails here, before any prompt
    block = model.config.block_size
    budget = block - min(params.max_new_tokens, block // 2)  # room left for the reply
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    tty = sys.stdout.isatty()

    def answer(text: str, one_shot: bool) -> None:
        nonlocal history
        convo, dropped = fit_context(system + history + [{"role": "user", "content": text}], tok, budget)
        if dropped:
            print(f"(the conversation outgrew the model's context of {block} tokens: dropped the "
                  f"{dropped} oldest message(s))", file=sys.stderr)
        pieces = []
        for piece in respond(model, tok, convo, params.max_new_tokens, temperature=params.temperature,
                             top_k=params.top_k, top_p=params.top_p, seed=params.seed,
                             tools=not args.no_tools, use_cache=not args.no_cache):
            pieces.append(piece)
            if piece.kind == "text":
                sys.stdout.write(piece.text)
            elif not one_shot:  # tool calls shown distinctly; -p prints the reply only
                sys.stdout.write(f"\x1b[36m{piece.shown()}\x1b[0m" if tty else piece.shown())
            sys.stdout.flush()
        sys.stdout.write("\n")
        history = convo[len(system):] + [as_message(pieces)]

    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("-p: the prompt is empty")
        answer(args.prompt, one_shot=True)
        return 0
    print(f"chatting with {args.ckpt} ({block}-token context); /help for commands, Ctrl-D to leave",
          file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        cmd, _, rest = line.strip().partition(" ")
        if not line.strip():
            continue
        if cmd == "/quit":
            return 0
        if cmd == "/help":
            print(HELP, file=sys.stderr)
        elif cmd == "/clear":
            history = []
            print("(cleared)", file=sys.stderr)
        elif cmd == "/system":
            system, history = ([{"role": "system", "content": rest}] if rest else []), []
            print("(system message set; conversation cleared)", file=sys.stderr)
        elif cmd == "/temperature":
            try:
                params = SamplingParams(**{**vars(params), "temperature": rest})
            except UserError as e:
                print(f"({e})", file=sys.stderr)
        elif cmd.startswith("/"):
            print(f"(unknown command {cmd}; /help lists them)", file=sys.stderr)
        else:
            sys.stdout.write("assistant> ")
            try:
                answer(line, one_shot=False)
            except UserError as e:
                print(f"\n({e})", file=sys.stderr)
