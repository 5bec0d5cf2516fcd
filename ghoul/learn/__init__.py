"""The learning stage: a bigram model, a small GPT with architecture switches, and side-by-side comparisons,
trained on horror stories with our own tokenizers by the same model, data pipeline and loop as pretraining."""
