"""`gptforge serve`: an OpenAI-compatible HTTP API and a web chat page over gptforge models.

``app.py`` speaks HTTP (FastAPI: requests, errors, server-sent events); ``batcher.py`` runs the
models, one thread per model decoding all its live requests as one batch; ``static/`` is the page.
"""
