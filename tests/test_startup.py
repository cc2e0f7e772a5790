"""The light commands import what they use: `--help` needs Hydra and the configs, not torch;
predict and export need torch and the network, not Lightning or torchmetrics (their start-up
times are `make bench`'s, benchmarks/startup.py)."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from tests.conftest import ROOT

HEAVY = {"lightning", "torchmetrics", "pytorch_lightning"}


def imported(*args: str) -> set[str]:
    """The top-level packages a `python -X importtime args...` process imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines}


def test_help_needs_neither_torch_nor_lightning():
    modules = imported("-m", "mnist_lightning.train", "--help")
    assert "hydra" in modules and not modules & {"torch", *HEAVY}


def test_predict_and_export_run_without_lightning(trained_run, tmp_path):
    png = tmp_path / "digit.png"
    digit = Image.new("L", (28, 28))
    digit.paste(255, (12, 5, 16, 23))  # a one
    digit.save(png)
    predict = ["-m", "mnist_lightning.predict", f"ckpt_path={trained_run}", f"inputs=[{png}]"]
    modules = imported(*predict, f"hydra.run.dir={tmp_path / 'p'}")
    assert "torch" in modules and not modules & HEAVY
    export = ["-m", "mnist_lightning.export", f"ckpt_path={trained_run}", "format=torchscript"]
    modules = imported(*export, f"output={tmp_path / 'm.pt'}", f"hydra.run.dir={tmp_path / 'e'}")
    assert (tmp_path / "m.pt").is_file() and not modules & HEAVY
    assert not imported("-c", "import mnist_lightning.serve.server") & HEAVY
