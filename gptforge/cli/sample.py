"""`gptforge sample`: stream text from a checkpoint."""

from __future__ import annotations

import argparse
import sys

from gptforge.cli.flags import add_config_flags, flag_values
from gptforge.errors import UserError
from gptforge.sampling import SamplingParams


def register(sub: argparse._SubParsersAction, help: str) -> None:
    s = sub.add_parser(
        "sample", help=help,
        description="Stream text from a trained model. Without a prompt, samples start from "
                    "<|endoftext|> (a fresh document). Special-token text in the prompt (such as "
                    "'<|endoftext|>') is encoded as plain text unless --special allow.")
    s.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    s.add_argument("--which", choices=["latest", "best"], default="best",
                   help="checkpoint of a run directory (default best, falling back to latest)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--prompt", help="prompt text")
    g.add_argument("--prompt-file", help="file holding the prompt text ('-' for stdin)")
    s.add_argument("--special", choices=["ordinary", "allow"], default="ordinary",
                   help="special-token strings in the prompt: plain text (default) or special tokens")
    s.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples to draw (default 1)")
    add_config_flags(s, SamplingParams, defaults=SamplingParams(temperature=0.8))
    s.add_argument("--no-cache", action="store_true", help="full forward pass every step (slower)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    s.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the weights file")
    s.set_defaults(func=run)


def read_prompt(args) -> str | None:
    """The prompt text of --prompt or --prompt-file (None if neither)."""
    if not args.prompt_file:
        return args.prompt
    try:
        if args.prompt_file == "-":
            return sys.stdin.read()
        with open(args.prompt_file, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{args.prompt_file}: cannot read the prompt ({e})") from None


def run(args) -> int:
    import codecs

    from gptforge.engine import generate_stream, load_for_inference

    params = SamplingParams(**{"temperature": 0.8, **flag_values(args, SamplingParams)})
    if not 1 <= args.num_samples <= 10_000:
        raise UserError(f"--num-samples {args.num_samples}: expected an integer in [1, 10000]")
    model, tok, _ = load_for_inference(args.ckpt, args.which, args.device, verify=not args.no_verify)
    text = read_prompt(args)
    if text:
        try:
            ids = tok.encode(text, allowed_special="all" if args.special == "allow" else set(),
                             disallowed_special=())
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
        seed = None if params.seed is None else (params.seed + n) % 2**63
        for step in generate_stream(model, [ids], params.max_new_tokens, temperature=params.temperature,
                                    top_k=params.top_k, top_p=params.top_p, seed=seed, stop_tokens=stops,
                                    use_cache=not args.no_cache):
            if step[0] is not None:
                out.write(dec.decode(tok.decode_bytes([step[0]])))
                out.flush()
        out.write(dec.decode(b"", final=True) + "\n")
        out.flush()
    return 0
