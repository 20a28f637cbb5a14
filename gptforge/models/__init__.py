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

Names are imported lazily (``from gptforge.models import build_model`` works as usual), so that
``gptforge --help`` does not import torch.
"""

_EXPORTS = {
    **dict.fromkeys(["ARCHS", "build_model", "model_config", "model_from_config"], "zoo"),
    **dict.fromkeys(["GPT", "GPTConfig", "KVCache", "PRESETS", "gpt_config"], "gpt"),
    **dict.fromkeys(["Bigram", "BigramConfig"], "bigram"),
    **dict.fromkeys(["LSTM", "LSTMConfig"], "lstm"),
    **dict.fromkeys(["MLP", "MLPConfig"], "mlp"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"gptforge.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'gptforge.models' has no attribute {name!r}")
