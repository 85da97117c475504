"""The training loop and its parts: loss, optimizers, checkpoints, logging, model card."""
