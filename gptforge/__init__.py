"""gptforge: build a GPT end to end, from raw text to a model you can sample from."""

__version__ = "0.1.0"
