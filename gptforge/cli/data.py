"""`gptforge data ...`: write the built-in corpus, prepare token shards, inspect shards, download the
evaluation task files."""

from __future__ import annotations

import argparse
import json
import sys

from gptforge.errors import UserError


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("data", help=help,
                       description="Write the built-in corpus, tokenize corpora into shards.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    c = dsub.add_parser("corpus", help="write a built-in corpus as plain text",
                        description="Write a built-in corpus (shakespeare: 37 plays) as UTF-8 text.")
    c.add_argument("name", choices=["shakespeare"])
    c.add_argument("--out", required=True, help="file to write ('-' for stdout)")
    c.add_argument("--split", choices=["all", "train", "val"], default="all",
                   help="which plays (val: hamlet, julius-caesar, the-tempest, twelfth-night)")
    c.set_defaults(func=cmd_corpus)

    pr = dsub.add_parser(
        "prepare", help="tokenize a corpus into memory-mappable shards",
        description="Tokenize a corpus into train.bin / val.bin (flat uint16 or uint32 token ids) "
                    "plus meta.json and a copy of the tokenizer. Special-token strings in the corpus "
                    "(such as '<|endoftext|>') are encoded as plain text; documents are separated by the "
                    "real <|endoftext|> token.")
    pr.add_argument("--corpus", required=True,
                    help="'shakespeare', a .txt, .jsonl or .parquet file, a directory of .txt and "
                         ".parquet files, or a quoted glob")
    pr.add_argument("--text-column", default="text",
                    help="the JSONL field or Parquet column holding the text (default: text)")
    pr.add_argument("--tokenizer", required=True,
                    help="'char' (train a char-level tokenizer on the corpus) or a saved tokenizer "
                         "(directory or tokenizer.json)")
    pr.add_argument("--out", required=True, help="output directory")
    pr.add_argument("--val-fraction", type=float, default=0.1,
                    help="share held out for validation: bytes of a single file, else every "
                         "1/f-th document (default 0.1; the built-in corpus splits by play)")
    pr.add_argument("--errors", choices=["strict", "replace"], default="strict",
                    help="invalid UTF-8: fail naming file and offset (strict) or use U+FFFD (replace)")
    pr.add_argument("--workers", type=int, default=None, help="encoding processes (default: cores, up to 4)")
    pr.set_defaults(func=cmd_prepare)

    ev = dsub.add_parser(
        "evals", help="download the evaluation task files",
        description="Download the task files `gptforge eval` and the speedrun read (18 CORE files from "
                    "llm-foundry, GSM8K, HumanEval, MT-bench questions; about 18 MB) from their original "
                    "sources, each checked against its pinned sha256. Files already there are kept. "
                    "Set GPTFORGE_EVALS_URL to a folder URL with the same layout (http://... or "
                    "file:///...) to copy from a mirror instead.")
    ev.add_argument("--out", metavar="DIR",
                    help="folder to fill (default $GPTFORGE_DATA, else ~/.cache/gptforge/evals, where "
                         "evaluation looks first)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_evals)

    i = dsub.add_parser("info", help="describe (and check) a shard directory")
    i.add_argument("dir")
    i.add_argument("--tokenizer", help="also check the shards were made with this tokenizer")
    i.set_defaults(func=cmd_info)


def cmd_corpus(args) -> int:
    from gptforge.data import shakespeare
    from gptforge.io import atomic_write

    text = shakespeare.corpus_text(args.split)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    atomic_write(args.out, text)  # never through a symlink or into a FIFO or device (one line instead)
    print(f"wrote {args.out}: {len(text.encode('utf-8')):,} bytes, "
          f"{len(shakespeare.plays(args.split))} plays", file=sys.stderr)
    return 0


def cmd_prepare(args) -> int:
    from gptforge.data.shards import prepare, resolve_tokenizer

    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be >= 1")
    tok = resolve_tokenizer(args.tokenizer, args.corpus, args.errors, args.text_column)
    meta = prepare(args.corpus, tok, args.out, val_fraction=args.val_fraction, errors=args.errors,
                   workers=args.workers, progress=sys.stderr.isatty(), text_column=args.text_column)
    _print_summary(args.out, meta)
    return 0


def cmd_evals(args) -> int:
    from gptforge.eval.files import FILES, cache_dir, download

    out = args.out or cache_dir()
    written = download(out, progress=not args.no_progress and sys.stderr.isatty())
    size = sum(f.size for f in FILES)
    print(f"{len(FILES)} task files ({size / 1e6:.1f} MB) in {out}: {len(written)} downloaded, "
          f"{len(FILES) - len(written)} already there")
    if args.out and args.out != str(cache_dir()):
        print(f"evaluate with them: gptforge eval --eval-data {out} ... (or set GPTFORGE_DATA={out})")
    return 0


def cmd_info(args) -> int:
    from gptforge.data.shards import open_shards
    from gptforge.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    shards = open_shards(args.dir, tok)
    print(json.dumps(shards.meta, indent=1))
    return 0


def _print_summary(out, meta: dict) -> None:
    t = meta["tokenizer"]
    print(f"shards in {out}: {t['kind']} tokenizer, vocab {t['vocab_size']:,}, {meta['dtype']}")
    for s, st in meta["splits"].items():
        print(f"  {s:5s} {st['tokens']:>12,} tokens  {st['bytes']:>12,} bytes  "
              f"{st['bytes'] / max(st['tokens'], 1):.2f} bytes/token  {st['documents']:,} documents")
