"""`gptforge serve`: an OpenAI-compatible API and a web chat page over one or more checkpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptforge.cli.flags import add_config_flags, flag_values
from gptforge.errors import UserError
from gptforge.serve.limits import Limits

SHUTDOWN_TIMEOUT_S = 5


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "serve", help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="OpenAI's Chat Completions and Completions protocols (/v1), a chat page at / and, with\n"
                    "two or more chat models (SFT, DPO runs), blind battles at /arena (README: Serving).",
        epilog="example:\n  gptforge serve --ckpt chat=runs/sft --ckpt base=runs/pretrain --port 8080")
    p.add_argument("--ckpt", action="append", required=True, metavar="[NAME=]DIR",
                   help="run or checkpoint directory to serve, optionally named (default name: the "
                        "directory's name); repeatable")
    p.add_argument("--which", choices=["latest", "best"], default="best",
                   help="checkpoint of a run directory (default best, falling back to latest)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require the header Authorization: Bearer KEY on /v1")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="with a loopback --host, also serve this Host name (repeatable, * for any; else 403)")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages of this origin call the server (CORS; repeatable, * for any)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--arena-db", default=None, metavar="FILE",
                   help="SQLite file of the arena's votes; turns the arena on (default: arena.db here when "
                        "two or more chat models are served)")
    add_config_flags(p, Limits)
    p.set_defaults(func=run)


def parse_ckpts(items: list[str]) -> dict[str, str]:
    """``["chat=runs/sft", "runs/base"]`` -> ``{"chat": "runs/sft", "base": "runs/base"}``.

    Raises:
        UserError: a directory that does not exist, or two models with one name.
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or "/" in name or not name:  # a bare path (which may itself contain '=' after a '/')
            name, path = Path(item).resolve().name, item
        if not Path(path).is_dir():
            raise UserError(f"--ckpt {item}: no such directory")
        if name in out:
            raise UserError(f"--ckpt {item}: a model named {name!r} is already served; name them NAME=DIR")
        out[name] = path
    return out


def build_app(args):
    """The app `serve` runs: every --ckpt loaded, each one a chat model when its run was finetuned on
    conversations (SFT, DPO: its config's task), not merely because its tokenizer has chat tokens.
    The arena is on with two or more chat models (votes in --arena-db, default arena.db) or when
    --arena-db is given.

    Raises:
        UserError: a bad flag, checkpoint or arena database.
    """
    from gptforge.engine import load_for_inference
    from gptforge.serve.app import create_app

    limits = Limits(**flag_values(args, Limits))
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: expected 1..65535")
    models, chat = {}, set()
    for name, path in parse_ckpts(args.ckpt).items():
        model, tok, state = load_for_inference(path, args.which, args.device)
        models[name] = (model, tok)
        if state.config.get("task", "pretrain") != "pretrain":
            chat.add(name)
        print(f"serving {name!r} from {path} ({model.config.block_size}-token context"
              f"{', chat' if name in chat else ''})", file=sys.stderr)
    arena_db = args.arena_db or ("arena.db" if len(chat) >= 2 else None)
    app = create_app(models, api_key=args.api_key, limits=limits, arena_db=arena_db, host=args.host,
                     allowed_hosts=args.allowed_host, allowed_origins=args.allowed_origin, chat_models=chat)
    if sum(s.chat for s in app.state.served.values()) >= 2:
        print(f"arena: http://{args.host}:{args.port}/arena  (votes in {Path(arena_db).resolve()})",
              file=sys.stderr)
    return app


def run(args) -> int:
    import uvicorn

    app = build_app(args)
    print(f"open http://{args.host}:{args.port}/  (OpenAI base_url http://{args.host}:{args.port}/v1)",
          file=sys.stderr)
    try:
        # on SIGTERM/Ctrl-C, requests still running after SHUTDOWN_TIMEOUT_S are cut (a stalled
        # client cannot keep the port taken and the process alive)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_S)
    except OSError as e:  # e.g. the port is taken
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e}") from None
    return 0
