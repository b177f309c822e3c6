"""Training: losses, the trainer (a loop with callbacks), checkpoints, run folders, the job, DDP."""
