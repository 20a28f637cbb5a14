"""`gptforge dpo`: preference-tune a chat model on chosen/rejected pairs (Direct Preference Optimization).

A training run like `gptforge sft` (same flags, checkpoints, Ctrl-C and exact --resume): the policy
starts from --ckpt, the frozen reference is that same checkpoint; its config starts from the
checkpoint's run, with the budgets and optimizer reset to DPO_DEFAULTS, then the flags given here.
"""

from __future__ import annotations

import argparse
import sys

from gptforge.cli.flags import FINETUNE_HELP, add_config_flags, flag_values
from gptforge.config import convert
from gptforge.errors import UserError
from gptforge.train.config import FINETUNE_RESETS, TrainConfig

# DPO moves a finetuned model a little: a small AdamW step, short runs
DPO_DEFAULTS = {**FINETUNE_RESETS, "optimizer": "adamw", "lr": 1e-4, "max_steps": 200, "batch_size": 8,
                "grad_clip": 1.0}
SKIP = ("task", "init_from", "arch", "preset", "depth", "data", "dpo_beta", "pretrain_mix")

EPILOG = """\
preference data: JSONL (.gz allowed) with "prompt" (messages or a string), "chosen" and "rejected"
(an assistant reply: messages or a string), or the hh-rlhf text format ("chosen"/"rejected" whole
"\\n\\nHuman: ... \\n\\nAssistant: ..." dialogues); or an arena vote database (battles voted A or B).

examples:
  gptforge dpo --ckpt runs/sft --prefs prefs.jsonl --out runs/dpo --beta 0.1
  gptforge dpo --ckpt runs/sft --db runs/arena.db --out runs/dpo2 --max-time 120
  gptforge dpo --resume runs/dpo --max-steps 400
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("dpo", help=help, epilog=EPILOG,
                       description=__doc__.split(chr(10) * 2)[1] + FINETUNE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="the SFT model to start from (and the frozen reference): a run or "
                                  "checkpoint directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prefs", metavar="FILE", help="preference pairs (JSONL, messages or hh-rlhf format)")
    src.add_argument("--db", metavar="FILE", help="an arena vote database: battles voted A or B")
    p.add_argument("--beta", default=None, metavar="X",
                   help="DPO beta: how strongly the policy is held to the reference (default: 0.1)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a DPO run from its latest checkpoint")
    add_config_flags(p, TrainConfig, skip=SKIP, finetune=DPO_DEFAULTS)
    p.set_defaults(func=run)


def run(args) -> int:
    from gptforge import checkpoint as ckpt
    from gptforge.arena.dpo import dpo_data, read_preferences
    from gptforge.tokenizer import load_tokenizer
    from gptforge.train import resume_config, train
    from gptforge.train.config import finetune_config

    flags = flag_values(args, TrainConfig, skip=SKIP)
    if args.beta is not None:
        flags["dpo_beta"] = convert(TrainConfig, "dpo_beta", args.beta, as_flag=True)
    if args.resume:
        if args.ckpt or args.prefs or args.db or (args.out and args.out != args.resume):
            raise UserError("--resume continues a DPO run with its own checkpoint and data; "
                            "leave out --ckpt, --prefs, --db and --out")
        cfg = resume_config(args.resume, flags)
        if cfg.task != "dpo":
            raise UserError(f"{args.resume}: not a DPO run (task {cfg.task!r})")
    else:
        if not args.ckpt:
            raise UserError("--ckpt: which SFT model to preference-tune? (a run or checkpoint directory)")
        if not (args.prefs or args.db):
            raise UserError("--prefs FILE or --db ARENA.db: the preference pairs to train on")
        cfg = finetune_config(args.ckpt, "dpo", DPO_DEFAULTS, flags, {"data": args.prefs or args.db},
                              purpose="DPO tunes GPT chat models")
    start = ckpt.find_checkpoint(cfg.init_from)
    tok = load_tokenizer(start / "tokenizer.json")
    pairs, skipped = read_preferences(cfg.data, skip_bad=True)
    if skipped:
        print(f"gptforge: warning: {len(skipped)} row(s) skipped, e.g. {skipped[0]}", file=sys.stderr)
    import torch

    # the reference pass runs where training will (cuda/mps when asked for or, with auto, present)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    reference, _ = ckpt.load_checkpoint(start, "latest", device)
    data, st, n_val = dpo_data(cfg, tok, start / "tokenizer.json", pairs, reference, device)
    del reference
    print(f"dpo data: {st.pairs:,} pairs ({st.pairs - n_val:,} train, {n_val:,} held out), "
          f"beta {cfg.dpo_beta}; "
          f"prompt cut to fit {cfg.block_size + 1} tokens: {st.cropped:,}; reply too long, skipped: "
          f"{st.skipped:,}", file=sys.stderr)
    summary = train(cfg, resume=bool(args.resume), data=data)
    if summary["stopped_by"] == "signal":
        print("interrupted: saved; continue with gptforge dpo --resume " + summary["run_dir"],
              file=sys.stderr)
    return 0
