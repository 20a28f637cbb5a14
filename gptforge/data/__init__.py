"""Data: the built-in corpus, corpora streamed from files, token shards, and BPE training on a corpus."""
