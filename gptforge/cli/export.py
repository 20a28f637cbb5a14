"""`gptforge export`: a checkpoint as one portable file for the numpy-only runner."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, help: str) -> None:
    e = sub.add_parser(
        "export", help=help,
        description="Write a checkpoint as one self-describing file (JSON header, weights, "
                    "tokenizer) that `python -m gptforge.run` (or a copy of gptforge/run.py) runs "
                    "with nothing but numpy.")
    e.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    e.add_argument("--which", choices=["latest", "best"], default="best")
    e.add_argument("--out", required=True, help="file to write, e.g. model.bin")
    e.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    e.set_defaults(func=run)


def run(args) -> int:
    from gptforge.engine import load_for_inference
    from gptforge.export import export_model

    model, tok, _ = load_for_inference(args.ckpt, args.which)
    info = export_model(model, tok, args.out, dtype=args.dtype)
    print(f"wrote {args.out}: {info['bytes']:,} bytes ({info['params']:,} parameters, {args.dtype}); "
          f"run it with: python -m gptforge.run {args.out} --prompt 'Hello'")
    return 0
