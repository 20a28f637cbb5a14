"""From base model to assistant: conversations, their data sources, and supervised finetuning.

- ``conversation``: the conversation format and ``check_conversation``.
- ``data``: conversations streamed from JSONL and Parquet files.
- ``mixtures``: built-in synthetic and packaged conversation sets (arithmetic, spelling, identity,
  smalltalk, gsm8k) with fixed train/test splits.
"""
