"""`gptforge rl`: tune a chat model by policy gradient on tasks whose answers can be checked.

A training run like `gptforge sft` (same flags, checkpoints, Ctrl-C and exact --resume): the policy
starts from --ckpt (an SFT run), which is also the frozen reference of the KL estimate; its config
starts from that run's, with the budgets and optimizer reset to RL_DEFAULTS, then the flags here.
"""

from __future__ import annotations

import argparse
import sys

from gptforge.cli.flags import FINETUNE_HELP, add_config_flags, flag_values
from gptforge.config import convert
from gptforge.errors import UserError
from gptforge.train.config import RL_DEFAULTS, RL_TASKS, TrainConfig

# config fields with flags of their own here (flag -> field), or none
OWN = {"tasks": "data", "samples": "rl_samples", "kl": "rl_kl", "eval_items": "rl_eval_items",
       "time": "max_time"}
SKIP = ("task", "init_from", "arch", "preset", "depth", "dpo_beta", "pretrain_mix", "rl_std", "sampling",
        "chunk_windows", "curriculum_mix", "eval_tokens", *OWN.values())
DESCRIPTION = """\
On-policy policy gradient with verifiable rewards (GRPO-style group baselines; Shao et al. 2024):
for each train prompt sample --samples replies with the calculator on, reward each 1 or 0 by the
task's own checker, advantage = reward minus its group's mean, loss = - advantage x log-probability
of each token the model sampled (prompt and tool output get no gradient), averaged per token, plus
--kl x a KL estimate against the starting model. Every --eval-interval steps: held-out pass@1 and
pass@k (k = --samples) on the tasks' test split. See gptforge/finetune/rl.py.
"""

EPILOG = """\
tasks: arithmetic, letter_count (gptforge.chat.tasks: train-split prompts in the phrasings SFT trains
on; evaluation on test-split prompts, half in held-out phrasings).

metrics.jsonl: train_reward (mean reward of the step's replies), train_reply_tokens, train_kl,
train_mixed (share of groups neither all right nor all wrong: the ones that teach), and on
evaluations val_pass1, val_passK, val_reply_tokens; val_loss is 1 - pass@1.

examples:
  gptforge rl --ckpt runs/speedrun-cpu-.../sft --tasks arithmetic,letter_count --out runs/rl --time 300
  gptforge rl --ckpt runs/sft --tasks letter_count --out runs/rl2 --samples 16 --batch-size 32 --kl 0.05
  gptforge rl --resume runs/rl --max-steps 400
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("rl", help=help, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=DESCRIPTION + FINETUNE_HELP)
    p.add_argument("--ckpt", help="the SFT model to start from (and the frozen reference): a run or "
                                  "checkpoint directory")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an RL run from its latest checkpoint")
    p.add_argument("--tasks", metavar="LIST", help=f"comma-separated verifiable tasks: {', '.join(RL_TASKS)}")
    p.add_argument("--samples", metavar="K", help="replies sampled per prompt, the group (default: 8); "
                                                  "--batch-size counts replies")
    p.add_argument("--kl", metavar="X",
                   help="weight of the KL penalty against the starting model (default: 0)")
    p.add_argument("--std", action=argparse.BooleanOptionalAction, default=None,
                   help="divide each group's advantages by its reward std, as GRPO (default: no)")
    p.add_argument("--eval-items", metavar="N",
                   help="held-out prompts per task in each evaluation (default: 16)")
    p.add_argument("--time", metavar="SECONDS", help="wall-clock budget of this run (default: none)")
    add_config_flags(p, TrainConfig, skip=SKIP, finetune=RL_DEFAULTS)
    p.set_defaults(func=run)


def run(args) -> int:
    from gptforge.finetune.rl import rl_config, rl_run_data
    from gptforge.train import resume_config, train

    flags = flag_values(args, TrainConfig, skip=SKIP)
    for arg, field in OWN.items():
        if getattr(args, arg) is not None:
            flags[field] = convert(TrainConfig, field, getattr(args, arg), as_flag=True)
    if args.std is not None:
        flags["rl_std"] = args.std
    if args.resume:
        if args.ckpt or args.tasks or (args.out and args.out != args.resume):
            raise UserError("--resume continues an RL run with its own checkpoint and tasks; "
                            "leave out --ckpt, --tasks and --out")
        cfg = resume_config(args.resume, flags)
        if cfg.task != "rl":
            raise UserError(f"{args.resume}: not an RL run (task {cfg.task!r})")
    else:
        if not args.ckpt:
            raise UserError("--ckpt: which SFT model to tune? (a run or checkpoint directory)")
        if not args.tasks:
            raise UserError("--tasks: which verifiable tasks? e.g. --tasks arithmetic,letter_count")
        cfg = rl_config(args.ckpt, flags)
    data = rl_run_data(cfg)
    print(f"rl: tasks {cfg.data.replace(',', ', ')}; {cfg.batch_size // cfg.rl_samples} prompts x "
          f"{cfg.rl_samples} samples per micro-batch; KL weight {cfg.rl_kl:g}"
          f"{'; advantages divided by the group std' if cfg.rl_std else ''}; held-out pass@1 and "
          f"pass@{cfg.rl_samples} on {cfg.rl_eval_items} prompts per task every {cfg.eval_interval} steps",
          file=sys.stderr)
    summary = train(cfg, resume=bool(args.resume), data=data)
    if summary["stopped_by"] == "signal":
        print("interrupted: saved; continue with gptforge rl --resume " + summary["run_dir"], file=sys.stderr)
    return 0
