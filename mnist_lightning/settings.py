"""Each command's settings: the command line, as Hydra composed it, typed in one object.

- train: `TrainSettings`, made by training/check.py. The run is built from it alone
  (training/run.py: the DataModule, the LightningModule, the Trainer, its loggers and
  callbacks), and its record is written from it (training/run_folder.py). Each part's settings
  are plain values, interpolations resolved, typed as their class's constructor takes them
  (doors/settings.py, doors/ranges.py).
- evaluate, predict, export and serve: their `*Options` (`command_options`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mnist_lightning.doors.problems import check
from mnist_lightning.doors.settings import METRIC, SEED, STRICT, plain_container

Node = dict[str, Any]  # a part's settings (name: value, ...), as conf/ writes them


class TrainOptions(BaseModel):
    """conf/train.yaml's own settings."""

    model_config = STRICT
    seed: SEED = 42
    cpu_threads: Optional[Annotated[int, Field(ge=1, le=1024)]] = 1  # noqa: UP045
    lr_find: bool = False
    gradient_flow: bool = False
    test: bool = True
    optimized_metric: METRIC = "val/acc_best"
    resume: Optional[str] = None  # noqa: UP045
    ckpt_path: Optional[str] = None  # noqa: UP045
    init_from: Optional[str] = None  # noqa: UP045


class ModelShape(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    net: Node


class TrainShape(BaseModel):
    """The train config's parts, as conf/ makes them: settings of a class, or parts by name."""

    model_config = ConfigDict(strict=True, extra="allow")
    paths: Node
    data: Node
    augment: Optional[Node] = None  # noqa: UP045
    model: ModelShape
    optimizer: Node
    scheduler: Optional[Node] = None  # noqa: UP045
    trainer: Node
    callbacks: Optional[dict[str, Optional[Node]]] = None  # noqa: UP045
    logger: Optional[dict[str, Optional[Node]]] = None  # noqa: UP045


class TrainSettings(TrainOptions, TrainShape):
    """Everything a run is: the options, each part's settings, and what the command said (the
    option chosen per config group, its overrides, and the config as composed, interpolations
    unresolved: what `resume=` continues with)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    model: Node
    callbacks: dict[str, Optional[Node]] = {}  # noqa: UP045 - None: a part removed
    logger: dict[str, Optional[Node]] = {}  # noqa: UP045
    choices: dict[str, Any] = {}
    overrides: list[str] = []
    composed: dict[str, Any] = {}

    @property
    def output_dir(self) -> str:
        return self.paths["output_dir"]

    def config(self) -> dict[str, Any]:
        """The resolved config, as the trackers keep it (`config/optimizer/lr`, ...)."""
        return self.model_dump(exclude={"choices", "overrides", "composed"})

    def headline(self) -> dict[str, Any]:
        """The settings that tell runs apart: the console's summary and TensorBoard's HParams."""
        net, scheduler, dataset = self.model["net"], self.scheduler, self.data.get("dataset")
        return {
            "dataset": dataset["name"] if dataset else "mnist",
            "net": net.get("name") or net.get("_target_"),
            "activation": self.model["activation"],
            "optimizer": self.optimizer["name"],
            "lr": self.optimizer["lr"],
            "scheduler": scheduler["name"] if scheduler else "none",
            "augment": self.choices.get("augment") or "none",
            "batch_size": self.data["batch_size"],
            "epochs": self.trainer.get("max_epochs"),
            "normalize": self.data["normalize"],
            "shuffle": self.data["shuffle"],
            "seed": self.seed,
        }

    def describe(self) -> str:
        """The run in two lines (the whole config is in .hydra/config.yaml)."""
        shown = "  ".join(f"{k}={v}" for k, v in self.headline().items())
        return (
            f"{shown}\ndata: {self.data['data_dir']}  accelerator="
            f"{self.trainer.get('accelerator')}  cpu_threads={self.cpu_threads}"
        )


# --- the other commands -----------------------------------------------------------------------

Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]


class Options(BaseModel):
    model_config = STRICT


class EvaluateOptions(Options):
    ckpt_path: str
    split: Literal["test", "val"] = "test"
    data_dir: Optional[str] = None  # noqa: UP045
    accelerator: Accelerator = "auto"
    max_misclassified: Annotated[int, Field(ge=0, le=1_000)] = 36
    net_target: Optional[str] = None  # noqa: UP045


def _files(value: Any) -> Any:
    ok = (isinstance(value, str) and value) or (
        isinstance(value, list) and value and all(isinstance(x, str) and x for x in value)
    )
    if not ok:
        raise ValueError(
            "must be an image file or folder, or a list of them: inputs=[a.png,photos/]"
        )
    return value


class PredictOptions(Options):
    ckpt_path: str
    inputs: Annotated[Any, AfterValidator(_files)]
    output: Optional[str] = None  # noqa: UP045
    save_preprocessed: bool = False
    top_k: Annotated[int, Field(ge=1, le=10)] = 3
    net_target: Optional[str] = None  # noqa: UP045


class ExportOptions(Options):
    ckpt_path: str
    format: Literal["onnx", "torch_export", "torchscript"] = "onnx"
    output: Optional[str] = None  # noqa: UP045
    net_target: Optional[str] = None  # noqa: UP045


class ServeOptions(Options):
    ckpt_path: str
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1"
    port: Annotated[int, Field(ge=1_024, le=65_535)] = 8000  # LitServe's range
    max_batch_size: Annotated[int, Field(ge=1, le=1_024)] = 32
    batch_timeout: Annotated[float, Field(ge=0, le=10)] = 0.005
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    api_servers: Annotated[int, Field(ge=1, le=64)] = 1
    accelerator: Accelerator = "auto"
    max_upload_mb: Annotated[float, Field(gt=0, le=1_000)] = 10
    max_side: Annotated[int, Field(ge=28, le=65_536)] = 4096
    max_decode_mb: Annotated[float, Field(gt=0, le=1_000)] = 16
    refusal_delay: Annotated[float, Field(ge=0, le=10)] = 0.05
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"
    net_target: Optional[str] = None  # noqa: UP045


def command_options(model: type[Options], cfg: DictConfig) -> Any:
    """A command's options (evaluate, predict, export, serve), checked against `model`, as an
    instance of it: one line per bad value."""
    values = {}
    for key in cfg:
        if key in ("hydra", "paths", "defaults") or OmegaConf.is_missing(cfg, key):
            continue
        values[str(key)] = plain_container(cfg.get(key))
    check("", model, values)
    return model.model_validate(values)


def accelerator_problem(where: str, accelerator: Any) -> str | None:
    """An accelerator this machine does not have, as one line saying what to use instead (train,
    evaluate and serve). Lightning would stop in a traceback, LitServe wait for a worker that never
    starts."""
    # torch's own checks (Lightning's accelerators ask the same), so serve needs no Lightning.
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    available["gpu"] = available["cuda"] or available["mps"]
    if not isinstance(accelerator, str) or available.get(accelerator, True):
        return None
    device = "GPU" if accelerator == "gpu" else f"{accelerator.upper()} device"
    return (
        f"{where}={accelerator}: this machine has no {device} that torch can use; use "
        f"{where}=auto (the best it has) or {where}=cpu"
    )
