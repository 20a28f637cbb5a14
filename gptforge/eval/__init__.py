"""Evaluation: log-likelihood scoring, the CORE tasks of base models, and bits per byte.

    loglik.py  score (context, continuation) token requests with any gptforge model, batched
    core.py    the 22 CORE in-context-learning tasks (DCLM; nanochat's core_eval): prompts, scoring, CORE
    bpb.py     bits per byte on a shard directory or a text file

Import the module you need (``from gptforge.eval.core import evaluate_core``); this package imports
nothing itself.
"""
