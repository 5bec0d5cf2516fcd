"""Optimizers and learning-rate schedules for the one training loop."""
