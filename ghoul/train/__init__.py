"""Training: the one loop (`loop.py`) and its two stages, pretraining and fine-tuning (`stages.py`)."""
