"""Hydra plugins of mnist-lightning (Hydra loads plugins only from the hydra_plugins namespace)."""
