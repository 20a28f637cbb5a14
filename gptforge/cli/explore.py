"""`gptforge explore`: score every document with a model, sort by loss, flag duplicates and noise."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
outputs in --out: index.html (tokens coloured by loss), explore.json (summary, the shown units),
units.jsonl (every unit, highest loss first, with its flags).

example: gptforge explore --ckpt runs/base --data data/mine --split val --out explore-val/
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("explore", help=help, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Loss per document (or window) in bits per byte, sorted both ways, with "
                                   "flags: duplicates, near duplicates, high-entropy strings, unusual "
                                   "characters.")
    p.add_argument("--ckpt", required=True, help="run or checkpoint directory (best, else latest)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--corpus", help="a corpus: shakespeare, a .txt or .jsonl file, a directory or a glob")
    g.add_argument("--data", metavar="SHARDS", help="a token shard directory (`gptforge data prepare`)")
    g.add_argument("--sft-data", metavar="SPEC", help="SFT conversations (as `gptforge sft --data`)")
    p.add_argument("--split", choices=["train", "val"], default="train", help="--data/--sft-data split")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--top", type=int, default=20, metavar="N", help="units shown each way (default 20)")
    p.add_argument("--window-bytes", type=int, default=2048, metavar="N",
                   help="window size for documents longer than --max-doc-bytes (default 2048)")
    p.add_argument("--max-doc-bytes", type=int, default=8192, metavar="N",
                   help="longer documents are scored window by window (default 8192)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from gptforge.data.corpus import open_corpus
    from gptforge.engine import load_for_inference
    from gptforge.errors import UserError
    from gptforge.explore import explore as ex

    if not 1 <= args.top <= 10_000:
        raise UserError(f"--top {args.top}: expected 1..10000")
    if args.window_bytes < 64 or args.max_doc_bytes < args.window_bytes:
        raise UserError("--window-bytes must be >= 64 and <= --max-doc-bytes")
    model, tok, _ = load_for_inference(args.ckpt, "best", args.device)
    total = None
    if args.corpus:
        corpus = open_corpus(args.corpus)
        total = corpus.total_bytes()
        # a first, cheap pass: which characters are usual in this corpus
        usual = ex.usual_characters(p.text for p in corpus.pieces(chunk_bytes=1 << 20))
        units = ex.corpus_units(args.corpus, tok, args.window_bytes, args.max_doc_bytes)
        what = args.corpus
    elif args.data:
        from gptforge.data.shards import open_shards

        if open_shards(args.data).meta["tokenizer"]["sha256"] != tok.identity()["sha256"]:
            raise UserError(f"{args.data}: made with a different tokenizer than {args.ckpt}")
        usual = ex.usual_characters(u.text for u in ex.shard_units(args.data, args.split))
        units = ex.shard_units(args.data, args.split, max_doc_tokens=4 * model.config.block_size)
        what = f"{args.data} ({args.split})"
    else:
        usual = ex.usual_characters(u.text for u in ex.sft_units(args.sft_data, tok, args.split))
        units = ex.sft_units(args.sft_data, tok, args.split)
        what = f"{args.sft_data} ({args.split})"
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="explore", disable=args.no_progress,
               file=sys.stderr)
    summary = ex.explore(model, tok, units, args.out, top=args.top, usual_chars=usual,
                         title=f"explore: {what} scored by {args.ckpt}", progress=bar.update)
    bar.close()
    f = summary["flags"]
    print(f"{summary['units']:,} units, {summary['bpb']:.3f} bits/byte; {f['duplicate']:,} duplicates, "
          f"{f['near_duplicate']:,} near duplicates, {f['high_entropy']:,} with high-entropy strings, "
          f"{f['unusual_chars']:,} with unusual characters", file=sys.stderr)
    for s in summary["highest"][:5]:
        print(f"  {s['bpb']:.3f} bits/byte  {s['source']}  {' '.join(s['flags'])}", file=sys.stderr)
    print(f"open {args.out}/index.html", file=sys.stderr)
    return 0
