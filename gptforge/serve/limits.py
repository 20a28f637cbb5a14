"""What one request to `gptforge serve` may ask for: apart from the app, so that the CLI builds its
flags without importing torch or FastAPI."""

from __future__ import annotations

from dataclasses import dataclass

from gptforge.config import check, setting


@dataclass
class Limits:
    """What one request may ask for, and how much the server queues (each field is a `serve` flag)."""

    max_batch: int = setting(32, "rows decoded together (continuous batching); also caps n", ge=1, le=4096)
    max_queue: int = setting(64, "rows waiting per model; beyond it requests get 429", ge=1, le=1_000_000)
    max_body_bytes: int = setting(1 << 20, "largest request body in bytes (413 beyond)", ge=1024, le=1 << 30)
    max_messages: int = setting(256, "messages per chat request", ge=1, le=100_000)
    max_chars: int = setting(200_000, "characters in all messages (or the prompt) of a request", ge=1,
                             le=100_000_000)
    max_n: int = setting(8, "choices per request (OpenAI's n)", ge=1, le=128)
    body_timeout_s: float = setting(30.0, "seconds a client may take to send its request body (408 beyond)",
                                    gt=0, le=3600)
    default_max_tokens: int = setting(256, "max_tokens when a request gives none (at most half the context)",
                                      ge=1, le=1_000_000)

    def __post_init__(self):
        check(self, "limits")
