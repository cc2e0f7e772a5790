"""Checkpoints are data, not code: written whole, read once and safely, checked against the
schema, and turned back into the model and its data settings.

Every read is `torch.load(weights_only=True)`: a checkpoint that carries pickled Python objects
is refused before anything in it runs. Its hyperparameters are names and numbers (the model's
and the data's settings), checked before anything is built; none of them says which code to
run, which data to test on, or where to write. Every write goes through `RunCheckpointIO`.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mnist_lightning.atomic import write_atomically
from mnist_lightning.data.datamodule import DATA_SOURCE, MNISTDataModule
from mnist_lightning.doors.settings import class_problems
from mnist_lightning.errors import CheckpointError, first_line
from mnist_lightning.models.classifier import MNISTClassifier
from mnist_lightning.models.networks import custom_network_problems
from mnist_lightning.models.optim import OPTIMIZERS

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # a run folder's checkpoint folder
LAST = "last.ckpt"
# ModelCheckpoint's state: the paths it remembers, re-anchored to the run folder on resume.
REMEMBERED_PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")

_handed_over: dict[str, Any] = {}  # a checkpoint read for Lightning, by path, size and time


def _stamp(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def read_checkpoint(path: str | Path, for_lightning: bool = False) -> dict[str, Any]:
    """torch.load(weights_only=True), with one clear message for each way it can go wrong.

    `for_lightning`: the train command checks the checkpoint it resumes from and hands the same
    dict to Lightning's restore (RunCheckpointIO.load_checkpoint), so the file is read once.
    """
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
        raise CheckpointError(
            f"refused to load {path}: it holds pickled Python objects, which could run code when loaded "
            f"({first_line(error)}). Nothing in it was executed. Load only checkpoints written by this project's "
            "training, which hold tensors and plain values."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(
            f"{path} is truncated or not a PyTorch checkpoint ({first_line(error)}). Use another checkpoint, "
            "for example the run's last.ckpt, or train again."
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
        or not isinstance(checkpoint.get("hyper_parameters"), dict)
    ):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint of this project (no state_dict/hyper_parameters). "
            "Pass a .ckpt file from a run's checkpoints/ folder."
        )
    if for_lightning:
        _handed_over.update(stamp=_stamp(path), checkpoint=checkpoint)
    return checkpoint


class RunCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer for a run folder's `checkpoints/`.

    - Writes are whole or nothing: the checkpoint is serialised in memory, written beside its
      final name and renamed; a full disk ends in one line naming the folder.
    - Reads are `read_checkpoint`, and the paths ModelCheckpoint remembers are re-anchored to
      this run's folder as it is now (a moved run keeps managing its files); a remembered path
      that is not a checkpoint of a `checkpoints/` folder is dropped with one warning, so that no
      checkpoint can make Lightning delete or write outside the run.
    - Lightning removes only checkpoint files of this run's folder and its `checkpoints/`.
    """

    def __init__(self, checkpoints_dir: str | Path | None = None) -> None:
        super().__init__()
        self.checkpoints_dir = Path(checkpoints_dir).resolve() if checkpoints_dir else None

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("RunCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory: a full disk is an OSError of the write below
        write_atomically(path, lambda temporary: temporary.write_bytes(buffer.getbuffer()))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        path = Path(path)
        if _handed_over.get("stamp") == _stamp(path):
            checkpoint = _handed_over.pop("checkpoint")
            _handed_over.clear()
        else:
            checkpoint = read_checkpoint(path)
        if self.checkpoints_dir is not None:
            self.keep_inside(checkpoint, path)
        return checkpoint

    def remove_checkpoint(self, path) -> None:
        path = Path(path)
        # checkpoints/, or the run folder itself: the learning-rate finder's temporary checkpoint
        # (Lightning writes it to default_root_dir, restores it and removes it).
        folders = (
            (self.checkpoints_dir, self.checkpoints_dir.parent) if self.checkpoints_dir else ()
        )
        inside = not folders or (
            path.resolve().parent in folders and path.suffix == ".ckpt" and path.is_file()
        )
        if not inside:
            log.warning("not removing %s: it is not a checkpoint file of this run", path)
            return
        path.unlink(missing_ok=True)

    def _inside(self, remembered: Any) -> str | None:
        """A remembered checkpoint path as the same file of this run's checkpoints/ folder."""
        if remembered in ("", None):
            return ""
        if not isinstance(remembered, str):
            return None
        parts = PurePath(remembered)
        if ".." in parts.parts or parts.parent.name != CHECKPOINTS or parts.suffix != ".ckpt":
            return None
        return str(self.checkpoints_dir / parts.name)

    def keep_inside(self, checkpoint: dict[str, Any], path: Path) -> None:
        dropped = []

        def inside(remembered: Any) -> str:
            kept = self._inside(remembered)
            if kept is None:
                dropped.append(str(remembered))
            return kept or ""

        for state in (checkpoint.get("callbacks") or {}).values():
            if not isinstance(state, dict) or "best_model_path" not in state:
                continue  # only ModelCheckpoint remembers paths
            if "dirpath" in state:
                state["dirpath"] = str(self.checkpoints_dir)
            for key in REMEMBERED_PATHS:
                if key in state:
                    state[key] = inside(state[key])
            best = state.get("best_k_models")
            if isinstance(best, dict):
                best = {inside(remembered): score for remembered, score in best.items()}
                state["best_k_models"] = {k: score for k, score in best.items() if k}
        if dropped:
            log.warning(
                "%s remembers paths outside this run's %s/ folder; ignoring them: %s",
                path,
                CHECKPOINTS,
                ", ".join(sorted(set(dropped)))[:300],
            )


def resolve_checkpoint(path: str | Path) -> Path:
    """A `.ckpt` file as given, or a run folder's tested checkpoint: the one its metrics.json
    names (a file name, looked up in the folder's checkpoints/), else its only best checkpoint,
    else its last.ckpt."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a .ckpt file or a run folder (outputs/runs/<time>)"
        )
    folder = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    tested = tested_checkpoint_name(path)
    if tested and (folder / tested).is_file():
        return folder / tested
    best = sorted(p for p in folder.glob("*.ckpt") if p.name != LAST)
    if len(best) == 1:
        return best[0]
    if (folder / LAST).is_file() and not best:
        return folder / LAST
    if best:
        raise CheckpointError(
            f"{path} holds {len(best)} checkpoints and no metrics.json naming the tested one; "
            "pass one .ckpt file"
        )
    raise CheckpointError(
        f"{path} holds no checkpoint (*.ckpt); pass a .ckpt file or a run folder of a finished run"
    )


def tested_checkpoint_name(run_dir: Path) -> str | None:
    """The file name of the checkpoint a finished run tested, from its metrics.json (data: only
    a plain file name is taken, never a path)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    name = metrics.get("test_checkpoint") if isinstance(metrics, dict) else None
    if not isinstance(name, str):
        return None
    name = PurePath(name).name  # earlier versions wrote the whole path
    return name if re.fullmatch(r"[\w.=\-]+\.ckpt", name) else None


# --- what a checkpoint holds, checked ---------------------------------------------------------

# Before the schema (record format 2), checkpoints named their classes by import path; these
# known names are converted, anything else is refused.
_EARLIER_NETWORKS = {
    "mnist_lightning.network.MLP": "mlp",
    "mnist_lightning.network.CNN": "cnn",
}
_EARLIER_SCHEDULERS = {
    "torch.optim.lr_scheduler.StepLR": "step",
    "torch.optim.lr_scheduler.CosineAnnealingLR": "cosine",
    "torch.optim.lr_scheduler.OneCycleLR": "onecycle",
    "torch.optim.lr_scheduler.ReduceLROnPlateau": "plateau",
}
_EARLIER_OPTIMIZERS = {
    f"torch.optim.{cls.__name__}": name
    for name, cls in reversed(OPTIMIZERS.items())  # SGD: "sgd", not "momentum"
}


def _converted(settings: Any, known: Mapping[str, str]) -> Any:
    """Earlier settings `{"_target_": <known import path>, ...}` as `{"name": ..., ...}`."""
    if not isinstance(settings, dict) or "_target_" not in settings:
        return settings
    target = settings["_target_"]
    if target not in known:
        return settings  # left for the check to refuse
    options = {k: v for k, v in settings.items() if k not in ("_target_", "_partial_")}
    return {"name": known[target], **options}


def _upgrade(hyper_parameters: dict[str, Any], data: dict[str, Any]) -> tuple[dict, dict]:
    model = dict(hyper_parameters)
    model["net"] = _converted(model.get("net"), _EARLIER_NETWORKS)
    model["optimizer"] = _converted(model.get("optimizer"), _EARLIER_OPTIMIZERS)
    model["scheduler"] = _converted(model.get("scheduler"), _EARLIER_SCHEDULERS)
    data = {k: v for k, v in data.items() if k not in (*DATA_SOURCE, "expected_files")}
    augment = data.get("augment")
    if isinstance(augment, dict) and augment.get("_target_") in (
        "mnist_lightning.augment.BatchAugment",
        "mnist_lightning.data.augment.BatchAugment",
    ):
        data["augment"] = {k: v for k, v in augment.items() if k != "_target_"}
    return model, data


def checkpoint_settings(
    checkpoint: dict[str, Any], path: Path, net_target: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the data's settings a checkpoint holds, checked against the settings'
    types (doors/settings.py) before anything is built: names and numbers only, every name one
    this project knows (a network of the user's own only when `net_target`, named by the
    command, is that class)."""
    model = checkpoint["hyper_parameters"]
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    found = []
    if not isinstance(data, dict):
        found.append("datamodule_hyper_parameters: must be the data's settings")
        data = {}
    model, data = _upgrade(model, data)
    where = "hyper_parameters"
    net, own = model.get("net"), ()
    if isinstance(net, dict) and "_target_" in net:  # its settings are its own class's
        found += custom_network_problems(f"{where}.net", net, net_target, objects=False)
        own = ("net",)
    found += class_problems(where, MNISTClassifier, model, skip=own, objects=False)
    where = "datamodule_hyper_parameters"
    found += class_problems(where, MNISTDataModule, data, skip=DATA_SOURCE, objects=False)
    if found:
        raise CheckpointError(
            f"{path} is not a checkpoint this project can load: {found[0]}"
            + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
        )
    return model, data


def check_checkpoint_fits(model: torch.nn.Module, path: Path, checkpoint: dict) -> None:
    """Refuse, in one line, a checkpoint whose weights do not fit `model`."""
    saved = checkpoint["state_dict"]
    for name, tensor in model.state_dict().items():
        if name not in saved:
            raise CheckpointError(
                f"{path} has no {name}: it was not written by this run's model. Resume it with "
                "the config it was trained with, or start a new run."
            )
        if not isinstance(saved[name], torch.Tensor) or saved[name].shape != tensor.shape:
            shape = tuple(saved[name].shape) if isinstance(saved[name], torch.Tensor) else None
            raise CheckpointError(
                f"{path} holds another network ({name} is {shape}, this run's model has "
                f"{tuple(tensor.shape)}). Resume it with the config it was trained with, or "
                "start a new run."
            )


@dataclass
class Trained:
    """A trained model, as evaluate, predict, export and serve use it."""

    checkpoint: Path
    model: MNISTClassifier  # in eval mode, on the CPU
    data: dict[str, Any]  # the data settings it was trained with: normalisation, split, batches


def load_trained(ckpt_path: str | Path, net_target: str | None = None) -> Trained:
    """A `.ckpt` file or run folder's model, read once, checked, and built."""
    path = resolve_checkpoint(ckpt_path)
    checkpoint = read_checkpoint(path)
    model_settings, data = checkpoint_settings(checkpoint, path, net_target)
    try:
        model = MNISTClassifier(**model_settings)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its network cannot be built ({error})") from None
    check_checkpoint_fits(model, path, checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return Trained(path, model.eval(), data)
