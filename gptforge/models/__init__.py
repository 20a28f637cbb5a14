"""The model zoo: four next-token models on one interface, from Bengio et al. (2003) to GPT.

    bigram  Bigram   a V x V logit table                          (bigram.py)
    mlp     MLP      Bengio et al. 2003: n-gram features -> tanh   (mlp.py)
    lstm    LSTM     char-rnn style stacked LSTM                   (lstm.py)
    gpt     GPT      Transformer, presets "gpt2" and "modern"      (gpt.py)

Every model has ``model.config`` (a dataclass with vocab_size and block_size) and
``forward(idx: LongTensor (B, T), targets: LongTensor (B, T) | None = None) -> (logits (B, T, V) float32,
loss | None)``, loss being the mean cross-entropy in nats per token over targets != -1; plus
``num_params(exclude_embeddings=False)``, ``param_counts()`` and ``flops_per_token()``. Input
embeddings are ``nn.Embedding`` modules and the output layer is an ``nn.Linear`` named ``lm_head``
(Bigram's table is both, so it has only the embedding).
"""

import importlib
from contextlib import contextmanager

# the names of the zoo, here so that the CLI's flags (choices) can be built without importing torch
ARCHS = ("bigram", "mlp", "lstm", "gpt")
PRESETS = ("gpt2", "modern")  # GPT's architecture presets (gpt.py)

# everything else is imported on first use (PEP 562): `gptforge --help` must not pay for torch
_LAZY = {"Bigram": "bigram", "BigramConfig": "bigram", "GPT": "gpt", "GPTConfig": "gpt",
         "gpt_config": "gpt", "LSTM": "lstm", "LSTMConfig": "lstm", "MLP": "mlp", "MLPConfig": "mlp",
         "build_model": "zoo", "config_class": "zoo", "model_config": "zoo", "model_from_config": "zoo"}

__all__ = ["ARCHS", "PRESETS", "eval_mode", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"gptforge.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'gptforge.models' has no attribute {name!r}")


@contextmanager
def eval_mode(model):
    """``with eval_mode(model):`` runs the block in eval mode (no dropout) and restores the mode
    the model was in, train or eval, even when the block raises. Gradients still flow."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
