"""Decoding settings, apart from the engine so that the CLI builds its flags without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from gptforge.config import check, setting


@dataclass
class SamplingParams:
    """Decoding settings (each field's bounds are checked on construction).

    Attributes:
        max_new_tokens: tokens to generate per row (excluding the prompt).
        temperature: >= 0; 0 means greedy.
        top_k: keep the k most likely tokens (None: all; more than the vocabulary: all).
        top_p: nucleus mass in (0, 1] (1: no nucleus filtering).
        seed: seed for the sampler's own torch.Generator (None: nondeterministic).
    """

    max_new_tokens: int = setting(256, "tokens to generate per sample", ge=0, le=1_000_000)
    temperature: float = setting(1.0, "0 = greedy; higher = more random", ge=0, le=1000)
    top_k: int | None = setting(None, "keep the k most likely tokens; none = all", ge=1, le=1 << 24)
    top_p: float = setting(1.0, "nucleus: keep the smallest set of tokens with this much probability",
                           gt=0, le=1)
    seed: int | None = setting(None, "sampler seed; none = a different sample each run", ge=0,
                               le=2**63 - 1)

    def __post_init__(self):
        check(self, "sampling")
