"""`gptforge arena`: ratings from arena battles, and an offline arena judged by known answers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gptforge.errors import UserError

EPILOG = """\
examples:
  gptforge arena ratings --battles clean_battle.json --png ratings.png
  gptforge arena ratings --db runs/serve/arena.db --anchor sft --json
  gptforge arena auto --ckpt base=runs/speedrun/pretrain --ckpt sft=runs/sft \\
      --tasks arithmetic,letter_count \\
      --judge oracle --n 200 --db runs/arena.db
"""


def register(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("arena", help=help, description=help, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="arena_command", metavar="SUBCOMMAND", required=True)

    r = cmds.add_parser("ratings", help="Bradley-Terry ratings with bootstrap 95%% intervals, and online Elo",
                        description="Bradley-Terry ratings as the LMSYS Chatbot Arena computes them (ties "
                                    "half a win each, base 10, scale 400), bootstrap 95%% intervals, online "
                                    "Elo (K=4) beside them.")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", help="an arena vote database (SQLite)")
    src.add_argument("--battles", metavar="FILE", help="FastChat/LMSYS battle JSON (array or JSON lines)")
    _rating_flags(r)
    r.add_argument("--json", action="store_true", help="print the leaderboard as JSON instead of a table")
    r.set_defaults(func=run_ratings)

    a = cmds.add_parser("auto", help="an offline arena: tasks with known answers vote by correctness",
                        description="Models answer held-out questions with known answers; per question two "
                                    "models drawn at random (sides shuffled) battle and the oracle votes by "
                                    "correctness (both right: tie; both wrong: tie (bothbad)).")
    a.add_argument("--ckpt", action="append", default=[], metavar="[NAME=]DIR",
                   help="a chat model (run or checkpoint directory), optionally named; repeat, at least two")
    a.add_argument("--tasks", default="arithmetic,letter_count", help="comma-separated: arithmetic, "
                   "letter_count, gsm8k (default: arithmetic,letter_count)")
    a.add_argument("--judge", default="oracle", choices=("oracle",), help="who votes (default: oracle)")
    a.add_argument("--n", type=int, default=100, help="held-out items per task (default: 100)")
    a.add_argument("--db", help="store the battles in this vote database (created if missing)")
    a.add_argument("--seed", type=int, default=0, help="pairings, sides and sampling (default: 0)")
    a.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    a.add_argument("--all-pairs", action="store_true", help="every pair of models on every item")
    a.add_argument("--device", default="cpu", help="cpu, cuda, mps (default: cpu)")
    _rating_flags(a)
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.set_defaults(func=run_auto_cmd)


def _rating_flags(p):
    p.add_argument("--png", metavar="FILE", help="also write a PNG of the ratings with their intervals")
    p.add_argument("--anchor", metavar="MODEL",
                   help="this model rated exactly 1000 (default: the mean is 1000)")
    p.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds (default: 1000)")
    p.add_argument("--ci-seed", type=int, default=0, help="bootstrap seed (default: 0)")


def _check_numbers(args) -> None:
    """The numeric flags, before any work: one line naming the flag when a value is out of range."""
    checks = [("--rounds", args.rounds, 1, 1_000_000), ("--ci-seed", args.ci_seed, 0, 2**63 - 1)]
    if hasattr(args, "n"):
        checks += [("--n", args.n, 1, 10_000_000), ("--seed", args.seed, 0, 2**63 - 1),
                   ("--temperature", args.temperature, 0, 1000)]
    for flag, v, lo, hi in checks:
        if not (lo <= v <= hi):  # False for nan too
            raise UserError(f"{flag} {v}: expected a number >= {lo} and <= {hi}")


def _report(battles, args, extra: dict | None = None) -> None:
    from gptforge.arena.ratings import format_table, leaderboard, plot_ratings

    if args.rounds < 100:
        print(f"gptforge: warning: --rounds {args.rounds}: fewer than 100 bootstrap rounds give rough "
              "intervals",
              file=sys.stderr)
    rows = leaderboard(battles, rounds=args.rounds, seed=args.ci_seed, anchor=args.anchor)
    if args.png:
        plot_ratings(rows, args.png)
    if args.json:
        print(json.dumps({**(extra or {}), "battles": len(battles), "rounds": args.rounds,
                          "leaderboard": [r.to_dict() for r in rows]}, indent=1))
    else:
        print(format_table(rows))
        if args.png:
            print(f"plot: {args.png}", file=sys.stderr)


def run_ratings(args) -> int:
    from gptforge.arena.ratings import check_battle, read_battles
    from gptforge.arena.store import VoteStore, is_sqlite

    _check_numbers(args)
    if args.db:
        if not Path(args.db).is_file() or not is_sqlite(args.db):
            raise UserError(f"{args.db}: not an arena vote database (SQLite file)")
        battles = [check_battle(b, f"{args.db}: battle {b['question_id']}")
                   for b in VoteStore(args.db).fastchat_battles()]
    else:
        battles = read_battles(args.battles)
    if not battles:
        raise UserError(f"{args.db or args.battles}: no voted battles to rate")
    _report(battles, args)
    return 0


def model_specs(items: list[str]) -> dict[str, str]:
    """``[NAME=]DIR`` items -> {name: dir}; a name defaults to the run folder's name.

    Raises:
        UserError: fewer than two, or two with one name.
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            p = Path(item).resolve()
            name, path = (p.parent.parent.name if p.parent.name == "ckpt" else p.name), item
        if name in out:
            raise UserError(f"--ckpt: two models named {name!r}; name them: --ckpt NAME=DIR")
        out[name] = path
    if len(out) < 2:
        raise UserError("--ckpt: an arena needs at least two models (--ckpt A --ckpt B)")
    return out


def run_auto_cmd(args) -> int:
    from gptforge.arena.auto import run_auto
    from gptforge.arena.store import VoteStore
    from gptforge.engine import load_for_inference

    _check_numbers(args)
    specs = model_specs(args.ckpt)
    models = {}
    for name, path in specs.items():
        model, tok, _ = load_for_inference(path, "best", args.device)
        models[name] = (model, tok)
    tasks = [t for t in args.tasks.split(",") if t]
    store = VoteStore(args.db) if args.db else None
    res = run_auto(models, tasks, args.n, store, seed=args.seed, temperature=args.temperature,
                   all_pairs=args.all_pairs, log=lambda s: print(s, file=sys.stderr))
    if not args.json:
        from gptforge.eval.stats import format_interval

        for m, acc in res["accuracy"].items():
            print(f"{m}: " + ", ".join(f"{t} {a:.1%} {format_interval(*res['ci95'][m][t])}"
                                       for t, a in acc.items()), file=sys.stderr)
    _report(res["battles"], args, {"accuracy": res["accuracy"], "ci95": res["ci95"], "paired": res["paired"],
                                   "n": args.n, "tasks": tasks})
    return 0
