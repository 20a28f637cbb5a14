"""Data-engine tools: look at the data the way the model sees it.

- ``explore``: loss per document (bits per byte), sorted both ways, with flags beside it (exact and
  near duplicates, high-entropy strings, unusual characters); a static HTML page and a JSON file.
- ``inspect``: the exact (x, y) the trainer feeds at step N, decoded (SFT loss mask visible).
- ``doctor``: Karpathy's common-mistakes checklist, run for real on a config's data and model.

The checks and scorers are plain functions over models, batch sources and token arrays, so a test
can hand them a broken model or loader; ``gptforge.cli`` wires the real ones.
"""
