"""From base model to assistant: conversations, their data, rendering, SFT and chatting.

- ``conversation``: the conversation format and ``check_conversation``.
- ``data``: conversations streamed from JSONL and Parquet files.
- ``mixtures``: built-in conversation sets (arithmetic, spelling, identity, smalltalk, gsm8k) with
  fixed train/test splits (of items, and of phrasing families).
- ``tasks``: verifiable tasks (arithmetic, letter_count, social): held-out items and the checker
  that scores a reply, for evaluation and reward-based training.
- ``sources``: an SFT data spec (mixtures and files) -> train / test conversations.
- ``render``: conversations -> token ids and loss masks with the chat special tokens.
- ``sft``: packing into rows, batches (with a share of pretraining text), and the TrainData for
  the training loop.
- ``assistant``: fitting a conversation into the context and generating a reply with tools.
"""
