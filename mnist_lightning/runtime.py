"""Process-wide settings every entry point shares: library logs, CPU threads, the gc freeze."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_NOISE = ("Tip:", "TPU available", "HPU available", "Skipping setting a default", "LOCAL_RANK")


def _drop_noise(record: logging.LogRecord) -> bool:
    return not any(s in record.getMessage() for s in _NOISE)


def quiet_lightning_logs() -> None:
    """Route Lightning's messages through Hydra's logging (console + log file), minus its tips."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        if _drop_noise not in handler.filters:  # once, even when a sweep trains many jobs
            handler.addFilter(_drop_noise)
    # Library deprecation chatter that a user can do nothing about.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def set_cpu_threads(threads: int | None) -> None:
    """torch's intra-op threads on the CPU; None keeps torch's default (one per core).

    Two trainings that each use every core slow each other down many times over, and this small
    network gains little from a second thread (see benchmarks/README.md).
    """
    if threads:
        import torch

        torch.set_num_threads(threads)


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def imported_objects_frozen() -> Iterator[None]:
    """Torch, Lightning, SciPy and the rest leave ~450,000 long-lived objects that every full
    garbage collection walks, and the interpreter's exit once more. Frozen, they are left
    alone; what the work creates is collected as usual. The freeze stays for the exit; in a
    sweep whose jobs share this process it ends with the job, so that the next job's
    collections can free this one's objects."""
    gc.freeze()
    try:
        yield
    finally:
        if in_multirun():
            gc.unfreeze()
