"""The training thread's stage: the probe pass and its reductions on the model's device,
the one copy to host memory, and the hooks that watch training and validation forwards."""
