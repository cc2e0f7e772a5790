"""A training run: its folder, callbacks, checkpoints, trackers and figures."""
