"""`gptforge sample` (stream text from a checkpoint) and `gptforge export` (one portable file)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add the sampling and export subcommands to the top-level parser."""
    s = sub.add_parser(
        "sample", help="generate text from a checkpoint",
        description="Stream text from a trained model. Without a prompt, samples start from "
                    "<|endoftext|> (a fresh document).")
    s.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    s.add_argument("--which", choices=["latest", "best"], default="best",
                   help="checkpoint of a run directory (default best, falling back to latest)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--prompt", help="prompt text")
    g.add_argument("--prompt-file", help="file holding the prompt text ('-' for stdin)")
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--max-new-tokens", type=int, default=256)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (default 1)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--no-cache", action="store_true", help="full forward pass every step (slower)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser(
        "export", help="write model + tokenizer as one file for the numpy-only run.py",
        description="Write a checkpoint as one self-describing file (JSON header, weights, "
                    "tokenizer) that gptforge/run.py runs with nothing but numpy.")
    e.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    e.add_argument("--which", choices=["latest", "best"], default="best")
    e.add_argument("--out", required=True, help="file to write, e.g. model.bin")
    e.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    e.set_defaults(func=cmd_export)


def cmd_sample(args) -> int:
    import codecs

    import torch

    from gptforge.errors import UserError
    from gptforge.generate import SamplingParams, generate_stream, load_for_inference

    params = SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    params.validate()
    if args.num_samples < 1:
        raise UserError("--num-samples must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    model, tok, _ = load_for_inference(args.ckpt, args.which, args.device)

    if args.prompt_file:
        try:
            if args.prompt_file == "-":
                text = sys.stdin.read()
            else:
                with open(args.prompt_file, encoding="utf-8") as f:
                    text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{args.prompt_file}: cannot read the prompt ({e})") from None
    else:
        text = args.prompt
    if text:
        try:
            ids = tok.encode(text, allowed_special="all")
        except ValueError as e:
            raise UserError(f"cannot tokenize the prompt: {e}") from None
    elif tok.eot_id is not None:
        ids = [tok.eot_id]
    else:
        raise UserError("this tokenizer has no <|endoftext|> to start from; give --prompt")
    block = model.config.block_size
    if len(ids) > block:
        print(f"gptforge: warning: prompt is {len(ids)} tokens, longer than the model's context of "
              f"{block}; keeping its last {block}", file=sys.stderr)
        ids = ids[-block:]
    stops = [tok.eot_id] if tok.eot_id is not None else []

    out = sys.stdout
    for n in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"\n--- sample {n + 1}/{args.num_samples} ---\n")
        out.write(text or "")
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        seed = None if args.seed is None else args.seed + n
        for step in generate_stream(model, [ids], args.max_new_tokens, temperature=args.temperature,
                                    top_k=args.top_k, top_p=args.top_p, seed=seed, stop_tokens=stops,
                                    use_cache=not args.no_cache):
            if step[0] is not None:
                out.write(dec.decode(tok.decode_bytes([step[0]])))
                out.flush()
        out.write(dec.decode(b"", final=True) + "\n")
        out.flush()
    return 0


def cmd_export(args) -> int:
    from gptforge.export import export_model
    from gptforge.generate import load_for_inference

    model, tok, _ = load_for_inference(args.ckpt, args.which)
    info = export_model(model, tok, args.out, dtype=args.dtype)
    print(f"wrote {args.out}: {info['bytes']:,} bytes ({info['params']:,} parameters, {args.dtype}); "
          f"run it with: python -m gptforge.run {args.out} --prompt 'Hello'")
    return 0
