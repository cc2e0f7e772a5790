"""Ship a trained model: `python -m mnist_lightning.export ckpt_path=... format=onnx`, or
`format=torch_export` (a `.pt2` program for `torch.export.load`), or `format=torchscript`
(deprecated by PyTorch since 2.11, kept as long as torch has it).

The exported model is self-contained: it takes a float image batch [N, 1, 28, 28] in [0, 1]
(white digit on black, as MNIST) with any N, applies the training normalisation inside, and
returns the 10 logits per image.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from mnist_lightning.atomic import write_atomically
from mnist_lightning.command import command
from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.data import MNIST_MEAN, MNIST_STD, normalized
from mnist_lightning.doors.checkpoints import load_trained
from mnist_lightning.errors import UserError
from mnist_lightning.folders import refuse_inside_a_run, writable
from mnist_lightning.settings import ExportOptions, command_options

log = logging.getLogger("mnist_lightning.export")
FORMATS = {"onnx": ".onnx", "torch_export": ".pt2", "torchscript": ".pt"}


class ExportedClassifier(nn.Module):
    """images in [0, 1] -> (normalise as in training) -> the network -> logits."""

    def __init__(
        self, net: nn.Module, normalize: bool, mean: float = MNIST_MEAN, std: float = MNIST_STD
    ) -> None:
        super().__init__()
        self.net = net
        self.normalize, self.mean, self.std = normalize, mean, std  # the dataset's

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(normalized(images, self.mean, self.std) if self.normalize else images)


def exportable(ckpt_path: str | Path, net_target: str | None = None) -> ExportedClassifier:
    trained = load_trained(ckpt_path, net_target)
    normalize, dataset = trained.data.get("normalize", True), trained.dataset
    return ExportedClassifier(trained.model.net, normalize, dataset.mean, dataset.std).eval()


def check_output(output: Path) -> Path:
    """Refuse, before any work, an output that would replace a run's file (its checkpoints,
    metrics.json, run_config.yaml, ...) or cannot be written."""
    output = refuse_inside_a_run(output, "output")
    if output.is_dir():
        raise UserError(f"output={output} is a folder; give a file name, e.g. {output}/model.onnx")
    writable(output.parent)
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
            elif format == "torch_export":
                batch = {"images": {0: torch.export.Dim.DYNAMIC}}  # any batch size
                program = torch.export.export(module, (example,), dynamic_shapes=batch)
                buffer = io.BytesIO()  # (torch.export.save wants a .pt2 name, or a buffer)
                torch.export.save(program, buffer)
                temporary.write_bytes(buffer.getvalue())
            else:
                torch.jit.script(module).save(str(temporary))

    return write_atomically(output, write)


def export_checkpoint(cfg: DictConfig) -> Path:
    """The command: the checkpoint `cfg` names, exported as it says; returns the file written."""
    options: ExportOptions = command_options(ExportOptions, cfg)
    default = Path(cfg.paths.output_dir) / f"model{FORMATS[options.format]}"
    output = check_output(Path(options.output) if options.output else default)
    return export(exportable(options.ckpt_path, options.net_target), options.format, output)


@hydra.main(config_path=CONFIG_DIR, config_name="export", version_base="1.3")
@command
def main(cfg: DictConfig) -> None:
    path = export_checkpoint(cfg)
    if cfg.format == "torchscript":
        log.warning(
            "TorchScript is deprecated by PyTorch (2.11) and Lightning; format=torch_export "
            "writes the torch.export program that replaces it"
        )
    log.info(
        "exported %s model to %s\ninput: images float32 [N, 1, 28, 28] in [0, 1] (white digit on black); "
        "output: logits [N, 10]",
        cfg.format,
        path.resolve(),
    )


if __name__ == "__main__":
    main()
