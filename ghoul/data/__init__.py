"""Text sources, the token-shard format, `ghoul prepare` and the training data loader.

Nothing is imported here: `prepare`, `sources` and `shards` stay free of torch so tokenizer workers start fast.
"""
