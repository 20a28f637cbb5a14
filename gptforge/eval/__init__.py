"""Evaluation: base-model CORE tasks, bits per byte, chat tasks and the HumanEval sandbox."""
