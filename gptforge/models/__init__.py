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

from contextlib import contextmanager

import torch

from gptforge.models.bigram import Bigram, BigramConfig
from gptforge.models.gpt import GPT, PRESETS, GPTConfig, KVCache, gpt_config
from gptforge.models.lstm import LSTM, LSTMConfig
from gptforge.models.mlp import MLP, MLPConfig
from gptforge.models.zoo import ARCHS, build_model, config_class, model_config, model_from_config

__all__ = ["ARCHS", "GPT", "LSTM", "MLP", "PRESETS", "Bigram", "BigramConfig", "GPTConfig", "KVCache",
           "LSTMConfig", "MLPConfig", "build_model", "config_class", "eval_mode", "gpt_config",
           "model_config", "model_from_config"]


@contextmanager
def eval_mode(model: torch.nn.Module):
    """``with eval_mode(model):`` runs the block in eval mode (no dropout) and restores the mode
    the model was in, train or eval, even when the block raises. Gradients still flow."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
