"""Ship a trained model: `python -m mnist_lightning.export ckpt_path=... format=onnx|torchscript`.

The exported model is self-contained: it takes a float image batch [N, 1, 28, 28] in [0, 1]
(white digit on black, as MNIST) with any N, applies the training normalisation inside, and
returns the 10 logits per image.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from mnist_lightning.atomic import write_atomically
from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.data.datamodule import MNIST_MEAN, MNIST_STD
from mnist_lightning.errors import UserError
from mnist_lightning.runtime import imported_objects_frozen

log = logging.getLogger("mnist_lightning.export")
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportedClassifier(nn.Module):
    """images in [0, 1] -> (normalise as in training) -> the network -> logits."""

    def __init__(self, net: nn.Module, normalize: bool) -> None:
        super().__init__()
        self.net = net
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(MNIST_MEAN))
        self.register_buffer("std", torch.tensor(MNIST_STD))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            images = (images - self.mean) / self.std
        return self.net(images)


def exportable(ckpt_path: str | Path) -> ExportedClassifier:
    from mnist_lightning.training.checkpoints import load_trained

    _, model, settings = load_trained(ckpt_path)
    return ExportedClassifier(model.net, settings.get("normalize", True)).eval()


def check_output(output: Path, checkpoint: Path) -> Path:
    """Refuse, before any work, an output that would destroy the input or cannot be written."""
    if output.exists() and (output.suffix == ".ckpt" or output.resolve() == checkpoint.resolve()):
        raise UserError(
            f"output={output} is a checkpoint (the one being exported, or another); writing the "
            "export there would destroy it. Choose another file name, e.g. model.onnx."
        )
    if output.is_dir():
        raise UserError(f"output={output} is a folder; give a file name, e.g. {output}/model.onnx")
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"output={output}: its folder cannot be made ({error.strerror}).") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"output={output}: the folder {folder} cannot be written.")
    return output


def export(module: ExportedClassifier, format: str, output: Path) -> Path:
    """Write the model in `format` to `output`, atomically (an existing file is replaced whole)."""
    example = torch.rand(2, 1, 28, 28)

    def write(temporary: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # both exporters announce their own deprecations
            if format == "onnx":
                torch.onnx.export(
                    module,
                    (example,),
                    str(temporary),
                    input_names=["images"],
                    output_names=["logits"],
                    dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                    dynamo=False,
                )
            else:
                torch.jit.script(module).save(str(temporary))

    return write_atomically(output, write)


@hydra.main(config_path=CONFIG_DIR, config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        if cfg.format not in FORMATS:
            raise UserError(
                f"format={cfg.format} is not supported; use format=onnx or format=torchscript"
            )
        from mnist_lightning.training.checkpoints import resolve_checkpoint

        output = (
            Path(cfg.output)
            if cfg.output
            else Path(cfg.paths.output_dir) / f"model{FORMATS[cfg.format]}"
        )
        check_output(output.expanduser(), resolve_checkpoint(cfg.ckpt_path))
        module = exportable(cfg.ckpt_path)
        with imported_objects_frozen():  # and the exit is 1 s shorter
            path = export(module, cfg.format, output)
    except UserError as error:
        log.error("error: %s", error)
        sys.exit(1)
    log.info(
        "exported %s model to %s\ninput: images float32 [N, 1, 28, 28] in [0, 1] (white digit on black); "
        "output: logits [N, 10]",
        cfg.format,
        path.resolve(),
    )


if __name__ == "__main__":
    main()
