"""`gptforge eval`: CORE tasks for base models, chat and tool tasks for SFT models, bits per byte."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptforge.errors import UserError

EPILOG = """\
tasks (comma-separated):
  core            the CORE tasks present offline (missing ones are named in the output)
  chat            arc_easy, arc_challenge (lettered), gsm8k and humaneval (generation, the
                  calculator; code runs in a sandboxed process), arithmetic, letter_count (each
                  also on template-seen and -unseen phrasings apart), social, mt_bench
  bpb             bits per byte on --data (a shard directory or a text file; default: the val
                  shards of the run's pretraining, a finetuned run's base run's)
  NAME            a CORE task (arc_easy, piqa, lambada_openai, ...) or a chat task (gsm8k, ...);
                  core:NAME / chat:NAME pick one form of a name both have (chat:arc_easy)

example:
  gptforge eval --ckpt runs/speedrun/sft --tasks chat,bpb --limit 100
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    e = sub.add_parser("eval", help=help, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Prints a table (accuracies with 95% Wilson intervals) and writes "
                                   "every figure, per-item correctness too, to a JSON file.")
    e.add_argument("--ckpt", required=True, help="run or checkpoint directory, or a Hugging Face folder "
                                                "(config.json + model.safetensors)")
    e.add_argument("--which", choices=["latest", "best"], default="best",
                   help="checkpoint of a run directory (default best, falling back to latest)")
    e.add_argument("--tokenizer", help="for a Hugging Face folder: tokenizer.json, .tiktoken, encoding name")
    e.add_argument("--tasks", default="core", help="what to run (see below; default core)")
    e.add_argument("--limit", type=int, metavar="N", help="items per task (default: all)")
    e.add_argument("--shots", type=int, metavar="K", help="few-shot examples for every CORE task "
                                                         "(default: each task's own count)")
    e.add_argument("--data", help="bpb: a shard directory (its val split) or a UTF-8 text file")
    e.add_argument("--eval-data", metavar="DIR",
                   help="evaluation data folder (default: where `gptforge data evals` puts it)")
    e.add_argument("--out", help="JSON to write (default: the run's eval.json, else eval-DATE-TIME.json)")
    e.add_argument("--examples", action="store_true", help="also write per-example records to the JSON")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=run)


def load_model(ckpt: str, which: str, tokenizer: str | None, device: str):
    """(model, tokenizer, run directory or None) from a gptforge run/checkpoint or an HF folder."""
    from gptforge.engine import check_device, load_for_inference

    p = Path(ckpt)
    if (p / "model.safetensors").is_file() and (p / "config.json").is_file():  # gptforge's have trainer.json
        from gptforge.models.hf import from_hf
        from gptforge.tokenizer import load_tokenizer

        if tokenizer is None:
            raise UserError(f"{p} is a Hugging Face folder: say which tokenizer it uses with --tokenizer "
                            "(a tokenizer.json or an encoding name such as gpt2)")
        return from_hf(p).to(check_device(device)).eval(), load_tokenizer(tokenizer), None
    if tokenizer is not None:
        raise UserError("--tokenizer is for Hugging Face folders; a gptforge checkpoint carries its own")
    model, tok, state = load_for_inference(ckpt, which, device)
    run_dir = Path(state.path).parent.parent if Path(state.path).parent.name == "ckpt" else None
    return model, tok, run_dir


def run(args) -> int:
    from gptforge.eval.suite import evaluate, format_table, resolve_tasks
    from gptforge.io import check_target, write_json
    from gptforge.train.config import pretraining_data

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: expected an integer >= 1")
    if args.shots is not None and args.shots < 0:
        raise UserError(f"--shots {args.shots}: expected an integer >= 0")
    plan = resolve_tasks(args.tasks)  # before loading: a typo fails fast
    if args.out:
        check_target(args.out)  # before the evaluation, which a bad --out would throw away at its end
    model, tok, run_dir = load_model(args.ckpt, args.which, args.tokenizer, args.device)
    bpb_data = args.data
    if plan.bpb and bpb_data is None:
        bpb_data = pretraining_data(run_dir)
    if plan.bpb and bpb_data is None:
        raise UserError("task bpb needs --data: a shard directory or a text file")
    out = Path(args.out) if args.out else new_file((run_dir or Path(args.ckpt)) / "eval.json")
    bar = None if args.no_progress else _Progress()
    try:
        result = evaluate(model, tok, plan, data_dir=args.eval_data, bpb_data=bpb_data, limit=args.limit,
                          shots=args.shots, examples=args.examples, out_dir=out.parent,
                          progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    result["ckpt"] = str(args.ckpt)
    print(format_table(result))
    write_json(out, result)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def new_file(path: Path) -> Path:
    """A file name not yet used: ``path`` itself, else with ``-YYYYmmdd-HHMMSS`` (then ``-2``...)
    added to its stem, so that a second evaluation never replaces the first (a speedrun's)."""
    from datetime import datetime

    if not path.exists():
        return path
    stem = f"{path.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    candidate, n = path.with_name(stem + path.suffix), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{stem}-{n}{path.suffix}")
    return candidate


class _Progress:
    """One tqdm bar per task (items done / total, with ETA) on stderr."""

    task, bar = None, None

    def update(self, task: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if task != self.task:
            self.close()
            # initial=done: the first report comes after the first batch, and tqdm's rate and ETA
            # count only what follows it
            self.task, self.bar = task, tqdm(total=total, initial=done, desc=task, unit="req",
                                             file=sys.stderr, dynamic_ncols=True, leave=False)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None
