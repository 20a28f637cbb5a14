"""Experiments the field rests on, each one command that prints a table and draws a plot: the
lineage from a bigram to a GPT (`lineage`), scaling laws that predict a held-out run (`scaling`),
in-context copying as it emerges (`icl`) and a planted data-poisoning trigger (`poison`).

They sit beside `arena` and `explore`: they drive pretraining and evaluation, nothing imports them.
"""
