"""What each class's settings may be, beside its constructor's annotations (doors/settings.py
makes them pydantic models): the project's own classes, which take plain values as
Lightning's examples do (OWN_RANGES), and the ranges that torch's and Lightning's constructors
leave to later. Networks, optimizers and schedulers are chosen by name, with their own
settings (NamedSettings)."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Optional, Union

import torch
from pydantic import AfterValidator, BaseModel, Field

from mnist_lightning.data import NUM_CLASSES
from mnist_lightning.data.augment import BatchAugment
from mnist_lightning.data.datasets import ROLES
from mnist_lightning.data.idx_files import MAX_IDX_ITEMS
from mnist_lightning.doors.settings import MAX_WHOLE, METRIC, STRICT, NamedSettings, plain_settings
from mnist_lightning.models.networks import ACTIVATIONS, NETWORKS
from mnist_lightning.models.optim import ONECYCLE_FROM_THE_RUN, OPTIMIZERS, SCHEDULERS

# --- the ranges the libraries check only later (in the fit, or never) ---------------------------


def _epochs(value: int | None) -> int | None:
    if value is not None and value < 1 and value != -1:
        raise ValueError("must be a whole number at least 1, -1 (no limit), or null")
    return value


@functools.cache
def _torch_ranges() -> dict[type, dict[str, Any]]:
    learning_rate = {"lr": Annotated[float, Field(gt=0)]}
    optimizers = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop)
    optimizers += (torch.optim.Adagrad, torch.optim.Adadelta)
    schedulers = torch.optim.lr_scheduler
    whole = Annotated[int, Field(ge=1, le=MAX_WHOLE)]
    fraction = Annotated[float, Field(gt=0, lt=1)]
    return {
        **{cls: learning_rate for cls in optimizers},
        schedulers.StepLR: {"step_size": whole, "gamma": Annotated[float, Field(gt=0)]},
        schedulers.CosineAnnealingLR: {"T_max": whole, "eta_min": Annotated[float, Field(ge=0)]},
        schedulers.OneCycleLR: {"pct_start": fraction},
        schedulers.ReduceLROnPlateau: {
            "factor": fraction,
            "patience": Annotated[int, Field(ge=0, le=MAX_WHOLE)],
        },
    }


@functools.cache
def _lightning_ranges() -> dict[type, dict[str, Any]]:
    # Lightning is imported here, not at the top: predict, export and serve check settings too
    # and must not wait for it to load; only train and evaluate, which import it anyway, check
    # a class of Lightning's.
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    metric = Optional[METRIC]  # noqa: UP045
    return {
        Trainer: {
            # Lightning's meanings: null is 1,000 epochs unless max_steps or max_time bounds the
            # run, -1 no limit (0 would train nothing).
            "max_epochs": Annotated[Optional[int], AfterValidator(_epochs)],  # noqa: UP045
            "max_steps": Annotated[int, Field(ge=-1, le=MAX_WHOLE)],
            "log_every_n_steps": Annotated[int, Field(ge=0, le=MAX_WHOLE)],
            "accumulate_grad_batches": Annotated[int, Field(ge=1, le=MAX_WHOLE)],
            "val_check_interval": Optional[  # noqa: UP045
                Union[  # noqa: UP007
                    Annotated[int, Field(ge=1, le=MAX_WHOLE)],
                    Annotated[float, Field(gt=0, le=1)],
                    str,
                    datetime.timedelta,
                ]
            ],
            "check_val_every_n_epoch": Optional[Annotated[int, Field(ge=1, le=MAX_WHOLE)]],  # noqa: UP045
        },
        EarlyStopping: {
            "monitor": metric,
            "divergence_threshold": Optional[Annotated[float, Field(gt=0)]],  # noqa: UP045
        },
        ModelCheckpoint: {"monitor": metric},
    }


def library_ranges(cls: type) -> dict[str, Any]:
    """The types and ranges of the project's own classes (OWN_RANGES), and those of torch's and
    Lightning's classes that their constructors leave to later (the fit fails after the run's
    files are written, or a value is taken that means nothing)."""
    if cls.__module__.startswith("mnist_lightning."):
        return OWN_RANGES.get(f"{cls.__module__}.{cls.__qualname__}", {})
    if cls.__module__.startswith("torch."):
        return _torch_ranges().get(cls, {})
    if cls.__module__.startswith("lightning."):
        return _lightning_ranges().get(cls, {})
    return {}


# --- the project's own classes: their types and ranges --------------------------------------
# The learner's files (the LightningModule, the DataModule, the networks, the augmentation)
# take plain values, as Lightning's examples do; what each setting may be is said here once,
# beside torch's and Lightning's, and checked before anything is built (check.py, the
# checkpoint door).


def _zoom(scale: Sequence[float]) -> Sequence[float]:
    if not 0 < scale[0] <= scale[1]:
        raise ValueError("must be [low, high] with 0 < low <= high")
    return scale


ACTIVATION = Literal[tuple(ACTIVATIONS)]
MAXOUT_PIECES = Annotated[int, Field(ge=2, le=16)]
BATCH_SIZE = Annotated[int, Field(ge=1, le=1_000_000)]
ZOOM = Annotated[  # [low, high] zoom factors
    Sequence[Annotated[float, Field(gt=0, le=10)]],
    Field(min_length=2, max_length=2),
    AfterValidator(_zoom),
]
CHANNELS = Annotated[
    Sequence[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=3, max_length=3)
]

OWN_RANGES: dict[str, dict[str, Any]] = {
    "mnist_lightning.models.networks.MLP": {"activation": str},
    "mnist_lightning.models.networks.CNN": {"activation": str, "channels": CHANNELS},
    "mnist_lightning.data.augment.BatchAugment": {
        "degrees": Annotated[float, Field(ge=0, le=180)],
        "translate": Annotated[float, Field(ge=0, le=1)],
        "scale": ZOOM,
        "shear": Annotated[float, Field(ge=0, le=89)],
        "elastic_alpha": Annotated[float, Field(ge=0, le=1_000)],
        "elastic_sigma": Annotated[float, Field(gt=0, le=100)],
        "elastic_bank": Annotated[int, Field(ge=1, le=16_384)],
        "mirror": Annotated[float, Field(ge=0, le=1)],
    },
}

# Optimizers, schedulers and networks are chosen by name, with their own settings.
OPTIMIZER_SETTINGS = NamedSettings("optimizer", OPTIMIZERS, skip=("params",))
SCHEDULER_SETTINGS = NamedSettings(
    "scheduler",
    SCHEDULERS,
    skip=("optimizer", "last_epoch", *ONECYCLE_FROM_THE_RUN),
    extra=(  # Lightning's keys (its lr_scheduler dict)
        ("interval", Literal["epoch", "step"], "epoch"),
        ("frequency", Annotated[int, Field(ge=1, le=MAX_WHOLE)], 1),
        ("monitor", Optional[METRIC], None),  # noqa: UP045
    ),
)
# A model's `net`: one of NETWORKS by name (activation and maxout_pieces are the model's), or a
# class of the user's own (`_target_`, model/net=custom).
NETWORK_SETTINGS = NamedSettings(
    "network", NETWORKS, skip=("activation", "maxout_pieces"), custom=True
)
NETWORK = Optional[NETWORK_SETTINGS.annotation()]  # noqa: UP045

# A dataset of MNIST's format (data/datasets.py): a config's whole description, or what a
# checkpoint keeps of it. Its class names are shown in answers, figures and the drawing page.
CLASS_NAME = Annotated[
    str, Field(min_length=1, max_length=40, pattern=r"^[^\x00-\x1f\x7f<>&\"']+$")
]
FILE_NAME = Annotated[str, Field(pattern=r"^[\w.\-]{1,100}$")]


class DatasetFile(BaseModel):
    model_config = STRICT
    file: FILE_NAME
    md5: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    items: Annotated[int, Field(ge=1, le=MAX_IDX_ITEMS)]


class DatasetSettings(BaseModel):
    model_config = STRICT
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
    folder: Optional[FILE_NAME] = None  # noqa: UP045
    files: Optional[dict[Literal[ROLES], DatasetFile]] = None  # noqa: UP045
    classes: Annotated[list[CLASS_NAME], Field(min_length=NUM_CLASSES, max_length=NUM_CLASSES)]
    mean: Annotated[float, Field(ge=0, le=1)]
    std: Annotated[float, Field(gt=0, le=1)]
    framing: Literal["digit", "product"] = "digit"
    mirrors: Optional[list[str]] = None  # noqa: UP045


DATASET = Optional[DatasetSettings]  # noqa: UP045

OWN_RANGES.update(
    {
        "mnist_lightning.models.classifier.MNISTClassifier": {
            "activation": ACTIVATION,
            "net": NETWORK,
            "optimizer": Optional[OPTIMIZER_SETTINGS.annotation()],  # noqa: UP045
            "scheduler": Optional[SCHEDULER_SETTINGS.annotation()],  # noqa: UP045
            "maxout_pieces": MAXOUT_PIECES,
            "label_smoothing": Annotated[float, Field(ge=0, lt=1)],
        },
        "mnist_lightning.models.networks.TrainedNetwork": {
            "activation": ACTIVATION,
            "net": NETWORK,
            "maxout_pieces": MAXOUT_PIECES,
        },
        "mnist_lightning.data.datamodule.MNISTDataModule": {
            "val_size": Annotated[int, Field(ge=1, le=59_999)],  # of the 60,000 training images
            "batch_size": BATCH_SIZE,
            "eval_batch_size": BATCH_SIZE,
            "split_seed": Annotated[int, Field(ge=0, le=MAX_WHOLE)],
            "augment": Optional[plain_settings(BatchAugment)],  # noqa: UP045
            "dataset": DATASET,
        },
        "mnist_lightning.doors.checkpoints.InferenceData": {"dataset": DATASET},
    }
)
