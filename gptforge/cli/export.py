"""`gptforge export`: a checkpoint as one portable file for the numpy-only runner, a Hugging Face
folder, or a GGUF file for llama.cpp / Ollama."""

from __future__ import annotations

import argparse

# format -> the dtypes it stores (the first is the default)
DTYPES = {"bin": ("float32", "bfloat16"), "hf": ("float32",), "gguf": ("float32", "float16")}


def register(sub: argparse._SubParsersAction, help: str) -> None:
    e = sub.add_parser("export", help=help,
                       description="bin: one file `python -m gptforge.run` runs with numpy alone; hf: a "
                                   "folder transformers loads; gguf: for llama.cpp, Ollama (gpt2 preset).")
    e.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    e.add_argument("--which", choices=["latest", "best"], default="best")
    e.add_argument("--format", choices=list(DTYPES), default="bin")
    e.add_argument("--out", required=True, help="file to write (bin, gguf: e.g. model.bin, model.gguf) "
                                                 "or folder (hf)")
    e.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weights' storage: bin float32|bfloat16, hf float32, gguf float32|float16 "
                        "(default float32)")
    e.set_defaults(func=run)


def run(args) -> int:
    from gptforge.engine import load_for_inference
    from gptforge.errors import UserError
    from gptforge.export import export_gguf, export_hf, export_model

    dtype = args.dtype or DTYPES[args.format][0]
    if dtype not in DTYPES[args.format]:
        raise UserError(f"--dtype {dtype}: the {args.format} format stores "
                        f"{' or '.join(DTYPES[args.format])}")
    model, tok, _ = load_for_inference(args.ckpt, args.which)
    if args.format == "hf":
        export_hf(model, tok, args.out)
        print(f"wrote {args.out}/ (Hugging Face: config.json, model.safetensors, tokenizer.json); "
              f"load it with transformers.AutoModelForCausalLM.from_pretrained({str(args.out)!r})")
    elif args.format == "gguf":
        info = export_gguf(model, tok, args.out, dtype=dtype)
        print(f"wrote {args.out}: {info['bytes']:,} bytes ({info['params']:,} parameters, {dtype}); "
              f"run it with llama.cpp: llama-cli -m {args.out} -p 'Hello'")
    else:
        info = export_model(model, tok, args.out, dtype=dtype)
        print(f"wrote {args.out}: {info['bytes']:,} bytes ({info['params']:,} parameters, {dtype}); "
              f"run it with: python -m gptforge.run {args.out} --prompt 'Hello'")
    return 0
