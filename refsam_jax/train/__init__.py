"""Training: trainable groups and optimiser, sharding, loss, jitted step, checkpoints, loop and LR sweeps."""
