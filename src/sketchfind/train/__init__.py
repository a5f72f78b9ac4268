"""Training: datasets, losses and the training loop."""
