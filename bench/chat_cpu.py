"""What SFT and the calculator tool buy a small model on a 2-core CPU (issue: base model to assistant).

1. base model: the cpu speedrun (BPE 2048, modern GPT, Muon) for --base-time seconds, or --base DIR;
2. SFT on arithmetic, spelling, identity and smalltalk for at most --sft-time seconds of training
   (the step count is calibrated so the schedule ends with the budget);
3. on the held-out test splits (never trained on):
   - arithmetic with the tool (operands up to 3 digits), the same model forced to answer directly
     (tool calls banned), and the base model prompted with 4 worked examples;
   - letter counting with the tool ("how many r in strawberry");
   - the share of replies that end with <|assistant_end|>;
   - prompts phrased unlike the training templates, reported apart.

Prints a table on stderr and one JSON object on stdout.

    python bench/chat_cpu.py                     # ~10 minutes: base 300 s, SFT 180 s, evaluation
    python bench/chat_cpu.py --base runs/x/pretrain --sft-time 60 --n 50
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

# phrasings unlike the training templates: (prompt, answer)
UNSEEN = [
    ("Compute 17 plus 26 for me.", "43"), ("I need 305 take away 48.", "257"),
    ("Multiply 12 by 11, please.", "132"), ("What do you get when you divide 144 by 12?", "12"),
    ("Add up 250 and 375.", "625"), ("Subtract 99 from 1000.", "901"),
    ("Find the product of 23 and 19.", "437"),
    ("If I have 64 and give away 27, what is left?", "37"), ("Sum of 808 and 192?", "1000"),
    ("Twelve times thirteen, as a number?", "156"),
    ("Count the letter s in 'mississippi'.", "4"), ("Number of e's in excellence?", "4"),
    ("In the word banana, how often does a appear?", "3"), ("tally the o's in 'bookkeeper'", "2"),
    ("How many letters does 'elephant' have?", "8"), ("Give me the number of t in 'attitude'.", "3"),
]


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (commas in numbers removed), or None."""
    found = NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


def same_number(a: str | None, b: str) -> bool:
    try:
        return a is not None and abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return False


def expected(conv: list[dict]) -> str:
    """The answer of a mixture conversation: its last tool output."""
    parts = conv[-1]["content"]
    return [p["text"] for p in parts if p["type"] == "tool_output"][-1]


def chat_accuracy(model, tok, items, max_new: int, **kw) -> dict:
    """Accuracy (answer = last number of the reply's text) and the share of replies ending with
    <|assistant_end|>, over ``items`` of (question, answer)."""
    from gptforge.chat.assistant import respond

    right, ended = 0, []
    for q, a in items:
        pieces = list(respond(model, tok, [{"role": "user", "content": q}], max_new, temperature=0,
                              ended=ended, **kw))
        right += same_number(last_number("".join(p.text for p in pieces if p.kind == "text")), a)
    return {"accuracy": right / len(items), "ended": sum(ended) / len(ended), "n": len(items)}


def base_accuracy(model, tok, items) -> dict:
    """The base model prompted with 4 worked examples; answer = the first number it writes."""
    from gptforge.engine import generate

    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in [
        ("What is 12 + 7?", "19"), ("What is 45 - 18?", "27"), ("What is 6 * 7?", "42"),
        ("What is 81 / 9?", "9")])
    right = 0
    for q, a in items:
        ids = tok.encode_ordinary(f"{shots}Question: {q}\nAnswer:")[-(model.config.block_size - 8):]
        out = tok.decode(generate(model, [ids], 8, temperature=0)[0])
        first = NUMBER.findall(out.split("\n")[0].replace(",", ""))
        right += same_number(first[0] if first else None, a)
    return {"accuracy": right / len(items), "n": len(items)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-chat", help="scratch folder")
    ap.add_argument("--base", help="a pretrained run to start from (default: run the cpu speedrun)")
    ap.add_argument("--base-time", type=float, default=300.0, help="speedrun training seconds (default 300)")
    ap.add_argument("--sft-time", type=float, default=180.0, help="SFT training seconds (default 180)")
    ap.add_argument("--data", default="arithmetic:20000,spelling:10000,identity,smalltalk",
                    help="SFT data spec (gptforge sft --data)")
    ap.add_argument("--n", type=int, default=200, help="test conversations per task (default 200)")
    args = ap.parse_args()

    import dataclasses

    from gptforge.chat.mixtures import mixture
    from gptforge.chat.sft import sft_config, sft_run_data
    from gptforge.engine import load_for_inference
    from gptforge.speedrun import SpeedrunConfig, calibrate_steps, speedrun
    from gptforge.tokenizer import load_tokenizer
    from gptforge.train import train

    out = Path(args.out)
    t0 = time.time()
    if args.base:
        base_run = Path(args.base)
    else:
        speedrun(SpeedrunConfig(time=args.base_time, out=str(out / "speedrun"), samples=1))
        base_run = out / "speedrun" / "pretrain"

    sft_dir = out / f"sft-{int(time.time())}"
    # `gptforge sft`'s config and data, with a smaller eval set
    cfg = sft_config(base_run, {"data": args.data, "out": str(sft_dir), "progress": "log",
                                "eval_interval": 50, "eval_tokens": 32768})
    tok = load_tokenizer(Path(cfg.init_from) / "tokenizer.json")
    data, tr, _ = sft_run_data(cfg)
    print(f"sft data: {tr.conversations} conversations, {tr.rows} rows, {tr.cropped} cropped",
          file=sys.stderr)
    steps, per_step = calibrate_steps(cfg, args.sft_time, data=data)
    cfg = dataclasses.replace(cfg, max_steps=steps)
    print(f"sft: {per_step * 1000:.0f} ms/step -> {steps} steps for {args.sft_time:.0f} s", file=sys.stderr)
    summary = train(cfg, data=data)

    chat_model, _, _ = load_for_inference(str(sft_dir), "latest")
    base_model, _, _ = load_for_inference(str(base_run), "best")
    arith = [(c[0]["content"], expected(c)) for c in mixture("arithmetic", "test", args.n, 1, max_digits=3)]
    counts = [(c[0]["content"], expected(c)) for c in mixture("spelling", "test", args.n * 4, 1)
              if ".count(" in str(c[-1]["content"])][:args.n]
    unseen_arith, unseen_count = UNSEEN[:10], UNSEEN[10:]
    t_eval = time.time()
    res = {
        "base_run": str(base_run), "sft_run": str(sft_dir), "sft_steps": summary["step"],
        "sft_train_s": round(summary["train_time_s"], 1), "sft_val_loss": summary["val_loss"],
        "arithmetic_tool": chat_accuracy(chat_model, tok, arith, 48),
        "arithmetic_direct": chat_accuracy(chat_model, tok, arith, 48, direct=True),
        "arithmetic_base_prompted": base_accuracy(base_model, tok, arith),
        "letter_count_tool": chat_accuracy(chat_model, tok, counts, 48),
        "unseen_arithmetic_tool": chat_accuracy(chat_model, tok, unseen_arith, 48),
        "unseen_letter_count_tool": chat_accuracy(chat_model, tok, unseen_count, 48),
    }
    res["eval_s"] = round(time.time() - t_eval, 1)
    res["total_s"] = round(time.time() - t0, 1)
    print(f"\n{'task':28s} {'n':>4s} {'accuracy':>9s} {'ends with <|assistant_end|>':>28s}", file=sys.stderr)
    for k, v in res.items():
        if isinstance(v, dict):
            end = f"{v['ended']:.1%}" if "ended" in v else "-"
            print(f"{k:28s} {v['n']:>4d} {v['accuracy']:>9.1%} {end:>28s}", file=sys.stderr)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
