"""Checkpoints are data, not code: written whole, found, read safely, and turned back into the
model and its data settings.

Every read is `torch.load(weights_only=True)` (directly, or through Lightning's
`load_from_checkpoint(weights_only=True)`): a checkpoint that carries pickled Python objects is
refused before anything in it runs. Every write goes through `AtomicCheckpointIO`.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mnist_lightning.atomic import write_atomically
from mnist_lightning.errors import CheckpointError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on any filesystem.

    Lightning writes through fsspec, which stages the file in the system's temp folder and then
    copies it into place when that is another filesystem: a kill during the copy, or a full disk,
    left a truncated file under the final name. Here the file is written beside its final name
    and renamed, and a failed write ends in one line naming the folder.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        write_atomically(path, lambda temporary: torch.save(checkpoint, temporary))


def resolve_checkpoint(path: str | Path) -> Path:
    """A `.ckpt` file as given, or a run folder's best checkpoint (the one training tested)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a .ckpt file or a run folder (outputs/runs/<time>)"
        )
    metrics_file = path / "metrics.json"
    if metrics_file.is_file():
        tested = json.loads(metrics_file.read_text()).get("test_checkpoint", "")
        if tested and Path(tested).is_file():
            return Path(tested)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    scored = []
    for candidate in folder.glob("*.ckpt"):
        match = re.search(r"val_acc=([0-9.]+)\.ckpt$", candidate.name)
        if match:
            scored.append((float(match.group(1)), candidate))
    if scored:
        return max(scored)[1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise CheckpointError(
        f"{path} holds no checkpoint (*.ckpt); pass a .ckpt file or a run folder of a finished run"
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load(weights_only=True), with one clear message for each way it can go wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes); it was not saved completely. Use another one."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"refused to load {path}: it holds pickled Python objects, which could run code when loaded "
            f"({first_line}). Nothing in it was executed. Load only checkpoints written by this project's "
            "training, which hold tensors and plain values."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise CheckpointError(
            f"{path} is truncated or not a PyTorch checkpoint ({first_line}). Use another checkpoint, "
            "for example the run's last.ckpt, or train again."
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or "state_dict" not in checkpoint
        or "hyper_parameters" not in checkpoint
    ):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint of this project (no state_dict/hyper_parameters). "
            "Pass a .ckpt file from a run's checkpoints/ folder."
        )
    return checkpoint


def check_checkpoint_fits(model: torch.nn.Module, path: str | Path) -> None:
    """Refuse, in one line, a checkpoint whose weights do not fit `model`."""
    saved = read_checkpoint(path)["state_dict"]
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in saved:
            raise CheckpointError(
                f"{path} has no {name}: it was not written by this run's model. Resume it with "
                "the config it was trained with, or start a new run."
            )
        if tuple(saved[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path} holds another network ({name} is {tuple(saved[name].shape)}, this run's "
                f"model has {tuple(tensor.shape)}). Resume it with the config it was trained "
                "with, or start a new run."
            )


def load_trained(ckpt_path: str | Path):
    """What evaluate, predict and export need from a `.ckpt` file or run folder, read once
    safely: (checkpoint path, the model in eval mode on the CPU, the data settings it was
    trained with: normalisation, split, batch size)."""
    path = resolve_checkpoint(ckpt_path)
    checkpoint = read_checkpoint(path)  # refuses unsafe or damaged files with a clear message first
    return path, _rebuild_model(path), dict(checkpoint.get("datamodule_hyper_parameters", {}))


def load_classifier(path: str | Path):
    """Rebuild the trained MNISTClassifier (eval mode, on the CPU) through Lightning's loader."""
    path = Path(path)
    read_checkpoint(path)  # refuses unsafe or damaged files with a clear message first
    return _rebuild_model(path)


def _rebuild_model(path: Path):
    from mnist_lightning.models.classifier import MNISTClassifier

    try:
        model = MNISTClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        detail = " ".join(str(error).split())[:240]
        raise CheckpointError(
            f"{path} does not hold one of this project's networks ({detail}). "
            "Pass a checkpoint written by python -m mnist_lightning.train."
        ) from None
    return model.eval()
