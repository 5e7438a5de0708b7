"""The data side of llamaforge: from raw dumps to the token stream the trainer reads.

- `sources/`, `filters/`, `pipeline.py`: `llamaforge prepare`, raw dumps to clean JSONL (`{"text": ...}` per line).
- `tokenizer_training.py`: `llamaforge tokenizer train`, a SentencePiece BPE model with Meta's trainer spec.
- `shards.py`: `llamaforge tokenize`, JSONL to memory-mapped token shards, one folder per source.
- `mixture.py`: `MixtureLoader`, weighted multi-source sampling with epochs, packing and a checkpointable position.
- `builtin_corpus.py`: the corpus every Python install has (stdlib source code and documentation) for `make demo`.
"""
