"""`gptforge sft`: finetune a base model on conversations (supervised finetuning).

The run is a training run like `gptforge pretrain` (same flags, checkpoints, Ctrl-C and exact
--resume); its config starts from the base run's (learning rates, optimizer, schedule), with the
budgets reset and no weight decay (gptforge.train.config.SFT_DEFAULTS), then the flags given here.
"""

from __future__ import annotations

import argparse
import sys

from gptforge.cli.flags import FINETUNE_HELP, add_config_flags, flag_values
from gptforge.errors import UserError
from gptforge.train.config import SFT_DEFAULTS, TrainConfig

SKIP = ("task", "init_from", "arch", "preset", "depth", "dpo_beta", "rl_samples", "rl_kl", "rl_std",
        "rl_eval_items")
DESCRIPTION = """\
Finetune a pretrained GPT on conversations: loss on what the assistant says (text, tool calls,
<|assistant_end|>), none on the rest. Settings not given come from the base run (learning rates,
optimizer, schedule), with the budgets reset (--max-steps 300) and no weight decay. A share of the
rows (--pretrain-mix, default 0.25) is the base run's own pretraining text, trained as plain
language modelling, so the model does not forget it.
"""

EPILOG = """\
data: a comma-separated list of built-in mixtures (arithmetic, spelling, identity, smalltalk, gsm8k),
each optionally with a count (arithmetic:2000), and conversation files (JSONL with a "messages"
field, or Parquet in the Hugging Face layout; a file, directory or glob).

examples:
  gptforge sft --ckpt runs/speedrun/pretrain --data arithmetic,spelling,identity,smalltalk --out runs/sft
  gptforge sft --ckpt runs/base --data chats.jsonl,identity --out runs/sft2 --max-time 180 --lr 0.003
  gptforge sft --resume runs/sft --max-steps 600
  gptforge sft --ckpt runs/base --data arithmetic,smalltalk --block-size 256   (RoPE bases: a longer
      context than pretraining, for longer chats; the speedrun doubles it)
  gptforge chat --ckpt runs/sft
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("sft", help=help, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=DESCRIPTION + FINETUNE_HELP)
    p.add_argument("--ckpt", help="the base model: a run or checkpoint directory (best, else latest)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an SFT run from its latest checkpoint")
    p.add_argument("--strict", action="store_true", help="stop at the first bad conversation in a file "
                                                         "(default: skip it and report file:line)")
    # --data is never taken from the base run (run() refuses an SFT without it)
    add_config_flags(p, TrainConfig, skip=SKIP, finetune={**SFT_DEFAULTS, "data": ""})
    p.set_defaults(func=run)


def run(args) -> int:
    from gptforge.chat.sft import sft_config, sft_run_data
    from gptforge.train import resume_config, train

    flags = flag_values(args, TrainConfig, skip=SKIP)
    if args.resume:
        if args.ckpt or (args.out and args.out != args.resume):
            raise UserError("--resume continues an SFT run from its own checkpoint; "
                            "leave out --ckpt and --out")
        cfg = resume_config(args.resume, flags)
        if cfg.task != "sft":
            raise UserError(f"{args.resume}: not an SFT run (task {cfg.task!r}); "
                            "use `gptforge pretrain --resume`")
    else:
        if not args.ckpt:
            raise UserError("--ckpt: which base model to finetune? (a run or checkpoint directory)")
        if not flags.get("data"):
            raise UserError("--data: what to finetune on? e.g. --data arithmetic,spelling,identity,smalltalk")
        cfg = sft_config(args.ckpt, flags)
    data, tr, te = sft_run_data(cfg, args.strict)
    for st in tr.files:
        print(f"{st}", file=sys.stderr)
    print(f"sft data: {tr.conversations:,} train conversations in {tr.rows:,} rows of {cfg.block_size + 1} "
          f"tokens ({tr.trained_tokens:,} of {tr.tokens:,} tokens trained on), {te.conversations:,} test "
          f"conversations; cropped to a row: {tr.cropped:,} train, {te.cropped:,} test", file=sys.stderr)
    if data.batches.pretrain is not None:
        print(f"sft data: each row is the base run's pretraining text with probability "
              f"{data.batches.pretrain_mix:g} "
              f"({len(data.batches.pretrain):,} train tokens to draw windows from)", file=sys.stderr)
    if tr.cropped:
        print(f"gptforge: warning: {tr.cropped} train conversation(s) longer than block_size + 1 = "
              f"{cfg.block_size + 1} tokens were cropped", file=sys.stderr)
    summary = train(cfg, resume=bool(args.resume), data=data)
    if summary["stopped_by"] == "signal":
        print("interrupted: saved; continue with gptforge sft --resume " + summary["run_dir"],
              file=sys.stderr)
    return 0
