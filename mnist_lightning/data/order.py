"""The training order, resumable: which image comes next, and the random draws that follow.

A run killed and resumed draws exactly what the uninterrupted run would have drawn:

- an epoch's order is a function of (seed, epoch) alone, and how far the epoch has gone is the
  sampler's state (`TrainingOrder`);
- the global random generators (torch's, numpy's, Python's: augmentation and dropout draw from
  them) are captured at the same moment (`random_state`), and every DataLoader draws its own
  base seed from a private generator, so that a loader started on resume takes nothing from them.

Lightning saves the state of a training loader that has `state_dict`/`load_state_dict` in every
checkpoint and restores it in `fit(ckpt_path=...)` (`ResumableLoader`); that is also what tells it
that a checkpoint saved in the middle of an epoch resumes exactly. The DataModule keeps the same
state as well, because Lightning skips the loader's restore when `trainer.estimated_stepping_batches`
was read first, as the one-cycle schedule does (Lightning issue #20550).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from mnist_lightning.data import already_batched


class TrainingOrder(Sampler[int]):
    """The training images' order: a permutation drawn from (seed, epoch), or the file's order
    without `shuffle`. `position` counts the indices of the epoch handed out so far: with the
    loader in this process (no workers) and a sized loader (Lightning prefetches none), these are
    exactly the images trained on."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch = self.position = 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at every epoch's start, as for a DistributedSampler."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[int]:
        # A generator: this body runs at the epoch's first batch, after Lightning's set_epoch.
        if self.shuffle:
            seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(self.size)
        for index in order[self.position :].tolist():
            self.position += 1
            yield index

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not 0 <= state["position"] <= self.size:  # (a checkpoint of another data split)
            raise ValueError(f"position {state['position']} is not within the training images")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]


class ResumableLoader(DataLoader):
    """A DataLoader whose place in the epoch (its TrainingOrder's state) Lightning saves in every
    checkpoint and restores on resume. A sampler Lightning put in its place (overfit_batches) has
    no state to keep."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict() if isinstance(self.sampler, TrainingOrder) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.sampler, TrainingOrder) and state:
            self.sampler.load_state_dict(state)


def random_state() -> dict[str, Any]:
    """torch's (CPU), numpy's and Python's global generators, now."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    _, python, python_gauss = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_position": int(position),
        "numpy_gauss": float(gauss) if has_gauss else None,
        "python": list(python[:-1]),
        "python_position": int(python[-1]),
        "python_gauss": python_gauss,
    }


def set_random_state(state: dict[str, Any]) -> None:
    """Put the generators back where `random_state` found them (torch, numpy and Python refuse a
    state that is not one; Lightning's restore reports it in one line: training/run.py)."""
    torch.set_rng_state(state["torch_cpu"])
    keys, gauss = state["numpy_keys"].numpy().astype(np.uint32), state["numpy_gauss"]
    np.random.set_state(("MT19937", keys, state["numpy_position"], gauss is not None, gauss or 0.0))
    random.setstate((3, (*state["python"], state["python_position"]), state["python_gauss"]))


class ResumableOrder:
    """A LightningDataModule mixin: a training loader that a killed run resumes exactly.

    `resumable_loader` follows a TrainingOrder drawn from the run's seed; `state_dict` (which
    Lightning saves in every checkpoint) holds its place, the elastic bank's seed of the
    DataModule's `augment`, and the random generators. Under DDP, Lightning shards the data with
    its DistributedSampler: such a run resumes with a fresh draw of the rest of its epoch.
    """

    order: TrainingOrder | None = None
    restored_order: dict[str, Any] | None = None  # from a checkpoint, before the loader exists
    augment: Any = None

    def resumable_loader(self, dataset, batch_size: int, shuffle: bool, **options) -> DataLoader:
        """The training loader; `options` are DataLoader's (a batch of `dataset.__getitems__` is
        taken as it is, without collating)."""
        options.setdefault("collate_fn", already_batched)
        # Every loader draws its base seed from a generator of its own, not from the run's: a
        # loader started on resume must not shift the augmentation's draws.
        options["generator"] = torch.Generator()
        if self.trainer is not None and self.trainer.world_size > 1:
            return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **options)
        if self.order is None:
            self.order = TrainingOrder(len(dataset), torch.initial_seed(), shuffle)
            if self.restored_order:
                self.order.load_state_dict(self.restored_order)
        return ResumableLoader(dataset, batch_size=batch_size, sampler=self.order, **options)

    def state_dict(self) -> dict[str, Any]:
        """The training loader's state is the same `order`: the module docstring says why it is
        kept twice."""
        return {
            "order": self.order.state_dict() if self.order is not None else {},
            "bank_seed": self.augment.bank_seed if self.augment is not None else None,
            "random": random_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored_order = state.get("order") or None
        if self.order is not None and self.restored_order:
            self.order.load_state_dict(self.restored_order)
        if self.augment is not None:
            self.augment.bank_seed, self.augment.fields = state.get("bank_seed"), None
        if "random" in state:
            set_random_state(state["random"])
