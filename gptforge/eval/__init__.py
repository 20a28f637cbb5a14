"""Evaluation: log-likelihood scoring, the CORE tasks of base models, chat tasks, bits per byte.

    loglik.py   score (context, continuation) token requests with any gptforge model, batched
    core.py     the 22 CORE in-context-learning tasks (DCLM; nanochat's core_eval): prompts, scoring, CORE
    chat.py     chat tasks of SFT models (lettered ARC, GSM8K and HumanEval by generation, tool tasks)
    sandbox.py  run untrusted Python (HumanEval completions) in a fenced-in subprocess
    bpb.py      bits per byte on a shard directory or a text file
    suite.py    one run over any mix of the above: what `gptforge eval` and the speedrun report call
    files.py    where the task files live, and their pinned download (`gptforge data evals`)

Import the module you need (``from gptforge.eval.core import evaluate_core``); this package imports
nothing itself.
"""
