"""The training loop, optimisers, schedules, checkpoints (import the submodules you need)."""
