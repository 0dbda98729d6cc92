"""Trainable models: the two-tower text encoder, losses, the training loop, the learned ranker."""
