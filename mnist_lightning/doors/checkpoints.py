"""The checkpoint door: a checkpoint is data, read once, bounded, and checked before anything
is built from it.

- The archive is checked before it is inflated: torch writes its entries stored, never
  compressed, so an entry that would inflate, or archives that would take more than
  MAX_CHECKPOINT_BYTES, are refused from their declared sizes.
- `torch.load(weights_only=True)`: a checkpoint that carries pickled Python objects is refused
  before anything in it runs; any other failure of the read, whatever its exception, is one
  line.
- Its structure is typed (`CheckpointContents`), its hyperparameters are names and numbers
  checked against the settings' types (doors/settings.py), and its weights must fit the model
  exactly. None of it says which code to run, which data to test on, or where to write.

A resume continues only your own runs: Lightning restores their last.ckpt, and any failure
while it does is one line (training/run.py); writes go through training/resume.py.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from hydra.utils import get_class
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mnist_lightning.data import DATA_SOURCE
from mnist_lightning.data.datasets import IdxDataset
from mnist_lightning.doors.problems import class_problems, import_problem
from mnist_lightning.doors.settings import plain_container
from mnist_lightning.errors import CheckpointError, first_line
from mnist_lightning.folders import resolve_checkpoint
from mnist_lightning.models.networks import TrainedNetwork

# What a checkpoint may take loaded (this project's: a few MB), and its archive's entries.
MAX_CHECKPOINT_BYTES = 2_000_000_000
MAX_ENTRIES = 100_000
MAX_DEPTH, MAX_VALUES = 32, 1_000_000  # of its values (a checkpoint holds ~10 deep, a few thousand)
Count = Annotated[int, Field(ge=0, le=2**62)]


class CheckpointContents(BaseModel):
    """The parts of a Lightning checkpoint this project reads, typed (Lightning's own keys
    beside them are kept as they are)."""

    model_config = ConfigDict(strict=True, extra="allow", arbitrary_types_allowed=True)

    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any]
    datamodule_hyper_parameters: dict[str, Any] | None = None
    epoch: Count = 0
    global_step: Count = 0
    callbacks: dict[str, dict[str, Any]] = {}
    optimizer_states: list[dict[str, Any]] = []
    lr_schedulers: list[dict[str, Any]] = []
    loops: dict[str, Any] = {}


def _check_archive(path: Path) -> None:
    """Refuse, from its declared sizes, an archive that would inflate or take too much memory."""
    with zipfile.ZipFile(path) as archive:
        entries = archive.infolist()
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"{len(entries):,} entries; at most {MAX_ENTRIES:,}")
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.file_size != entry.compress_size:
            raise ValueError(f"{entry.filename} is compressed; torch never writes it so")
    total = sum(entry.file_size for entry in entries)
    if total > MAX_CHECKPOINT_BYTES:
        raise ValueError(
            f"it would take {total / 1e6:,.0f} MB; at most {MAX_CHECKPOINT_BYTES / 1e6:,.0f}"
        )


def _check_values(checkpoint: Any) -> None:
    """Refuse values nested deeper than MAX_DEPTH, or more than MAX_VALUES of them counted as a
    tree: a pickle can nest without bound, share one list at every level (2**40 values from a
    few bytes) or hold itself, and every later walk of it (the settings' check, pydantic, a
    line that shows a value) would recurse out of the stack or never end. A walk of its own,
    without recursion; tensors are values, dense and holding their data (a sparse or meta
    tensor fails only where it is copied into the model)."""
    stack, seen = [(checkpoint, 0)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ValueError(f"it holds more than {MAX_VALUES:,} values")
        if isinstance(value, torch.Tensor) and (value.layout != torch.strided or value.is_meta):
            raise ValueError(
                f"it holds a {value.layout} tensor on {value.device}, not dense with its data"
            )
        if isinstance(value, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise ValueError(f"its values are nested more than {MAX_DEPTH} levels deep")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path`, bounded, loaded as data and typed; any failure is one
    CheckpointError saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes); it was not saved completely. Use another one."
        )
    try:
        _check_archive(path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        _check_values(checkpoint)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it holds pickled Python objects, which could run code when loaded "
            f"({first_line(error)}). Nothing in it was executed. Load only checkpoints written by this project's "
            "training, which hold tensors and plain values."
        ) from None
    except Exception as error:  # noqa: BLE001 - hostile bytes fail in many ways; each is the file's
        raise CheckpointError(
            f"{path} is truncated or not a PyTorch checkpoint ({first_line(error)[:200]}). Use another "
            "checkpoint, for example the run's last.ckpt, or train again."
        ) from None
    try:
        CheckpointContents.model_validate(checkpoint)
    except ValidationError as error:
        detail = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in detail["loc"]) or "its contents"
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint of this project ({where}: "
            f"{detail['msg'].lower()}). Pass a .ckpt file from a run's checkpoints/ folder."
        ) from None
    weights = checkpoint["state_dict"].items()
    if name := next(
        (n for n, w in weights if n.startswith("net.") and not w.isfinite().all()), None
    ):
        raise CheckpointError(
            f"{path}: its weight {name} is not finite (NaN or infinite): the run diverged before it "
            "was saved. Use an earlier checkpoint of the run, or train again."
        )
    return checkpoint


# How checkpoints written before the typed settings named their classes (by import path).
EARLIER_NAMES = ("mnist_lightning.", "torch.optim.")


def _earlier_version(model: dict[str, Any]) -> bool:
    parts = (model.get(key) for key in ("net", "optimizer", "scheduler"))
    return any(
        isinstance(part, dict) and str(part.get("_target_", "")).startswith(EARLIER_NAMES)
        for part in parts
    )


def custom_network_problems(
    where: str, settings: Any, named_target: str | None, objects: bool = True
) -> list[str]:
    """The problems of a network of the user's own (`_target_`): it is accepted only when it is
    `named_target`, the class the command itself names; its settings are its constructor's
    (`objects=False` for a file read back: `class_problems`)."""
    settings = plain_container(settings)
    target = settings.get("_target_")
    if not isinstance(target, str):
        return [f"{where}._target_={target}: must be the name of a class (package.module.Class)"]
    if target != named_target:
        return [
            f"{where} is your own network class {target}; it is loaded only when the command "
            f"names it too: net_target={target}"
        ]
    try:
        cls = get_class(target)
    except (ImportError, ValueError) as error:
        return [import_problem(where, target, error)]
    options = {k: v for k, v in settings.items() if k != "_target_"}
    return class_problems(where, cls, options, objects=objects)


class InferenceData:
    """What predict, export and serve read of a checkpoint's data settings."""

    def __init__(
        self, normalize: bool = True, dataset: dict[str, Any] | None = None, **unread: Any
    ) -> None:
        self.normalize, self.dataset = normalize, dataset


def checkpoint_settings(
    checkpoint: dict[str, Any],
    path: Path,
    net_target: str | None = None,
    classes: tuple[type, type] = (TrainedNetwork, InferenceData),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the data's settings a checkpoint holds, checked against the settings'
    types (doors/settings.py) of the `classes` that will take them (the command's: the whole
    MNISTClassifier and MNISTDataModule to evaluate or resume, only what runs the network
    otherwise) before anything is built: names and numbers only, every name one this project
    knows (a network of the user's own only when `net_target`, named by the command, is that
    class)."""
    model = checkpoint["hyper_parameters"]
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if _earlier_version(model):
        raise CheckpointError(
            f"{path} was written by an earlier version of this project (it names its classes by "
            "import path); train the run again with this version."
        )
    found = []
    if not isinstance(data, dict):
        found.append("datamodule_hyper_parameters: must be the data's settings")
    data = {k: v for k, v in data.items() if k not in DATA_SOURCE} if not found else {}
    where = "hyper_parameters"
    net, own = model.get("net"), ()
    if isinstance(net, dict) and "_target_" in net:  # its settings are its own class's
        found += custom_network_problems(f"{where}.net", net, net_target, objects=False)
        own = ("net",)
    model_class, data_class = classes
    found += class_problems(where, model_class, model, skip=own, objects=False)
    found += class_problems("datamodule_hyper_parameters", data_class, data, objects=False)
    if found:
        raise CheckpointError(
            f"{path} is not a checkpoint this project can load: {found[0]}"
            + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
        )
    return model, data


def check_checkpoint_fits(model: torch.nn.Module, path: Path, saved: dict) -> None:
    """Refuse, in one line, a checkpoint whose weights (`saved`) do not fit `model` exactly: the
    same names, shapes and kinds of number, nothing more and nothing less."""
    expected = model.state_dict()
    redo = "Resume it with the config it was trained with, or start a new run."
    missing = [name for name in expected if name not in saved]
    if missing:
        raise CheckpointError(
            f"{path} has no {missing[0]}: it was not written by this run's model. {redo}"
        )
    extra = [name for name in saved if name not in expected]
    if extra:
        raise CheckpointError(f"{path} holds {extra[0]}, which this run's model has not. {redo}")
    for name, tensor in expected.items():
        kept = saved[name]
        if kept.shape != tensor.shape or kept.dtype.is_floating_point != tensor.is_floating_point():
            raise CheckpointError(
                f"{path} holds another network ({name} is {tuple(kept.shape)} {kept.dtype}, "
                f"this run's model has {tuple(tensor.shape)} {tensor.dtype}). {redo}"
            )


def fits_before_building(build: Callable[[], torch.nn.Module], path: Path, saved: dict) -> bool:
    """`check_checkpoint_fits` on the model `build` makes, made on the meta device (shapes and
    kinds of number, no memory) before it is made for real: the settings a checkpoint or a run's
    record holds could describe a network of many GB (a CNN of 4,096 channels with Maxout of 16
    pieces: 29 GB), whose weights, bounded by MAX_CHECKPOINT_BYTES, never fit it. False when
    the model cannot be made there (a network class of your own that computes with its
    tensors): check it once it is built."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # noqa: BLE001 - the real build reports its own errors, in one line
        return False
    check_checkpoint_fits(model, path, saved)
    return True


@dataclass
class Trained:
    """A trained model, as evaluate, predict, export and serve use it."""

    checkpoint: Path
    model: torch.nn.Module  # in eval mode, on the CPU; `.net` is the network
    data: dict[str, Any]  # the data settings it was trained with: normalisation, split, batches
    settings: dict[str, Any]  # the model's: its network (net, activation, maxout_pieces), ...
    dataset: IdxDataset  # what it learnt: classes, normalisation, framing (MNIST before them)


def load_trained(
    ckpt_path: str | Path,
    net_target: str | None = None,
    classes: tuple[type, type] = (TrainedNetwork, InferenceData),
) -> Trained:
    """A `.ckpt` file or run folder's model, read once, checked, and built as `classes[0]` (the
    network alone by default, or the command's LightningModule) with its `net.` weights."""
    path = resolve_checkpoint(ckpt_path)
    checkpoint = read_checkpoint(path)
    model_settings, data = checkpoint_settings(checkpoint, path, net_target, classes)
    # The network's weights: the training metrics' sums beside them are not read.
    weights = {name: w for name, w in checkpoint["state_dict"].items() if name.startswith("net.")}
    fits = fits_before_building(lambda: classes[0](**model_settings), path, weights)
    try:
        model = classes[0](**model_settings)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its network cannot be built ({error})") from None
    if not fits:
        check_checkpoint_fits(model, path, weights)
    model.load_state_dict(weights)
    return Trained(path, model.eval(), data, model_settings, IdxDataset.of(data.get("dataset")))
