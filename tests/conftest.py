"""Shared fixtures: tiny MNIST-format IDX files, config composition, subprocess runs."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_TRAIN, FIXTURE_TEST = 640, 160


def synthetic_digits(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable stand-ins for digits: class k lights a bar at a place of its own, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    labels = labels[torch.randperm(count, generator=generator)]
    images = torch.randint(0, 60, (count, 28, 28), generator=generator, dtype=torch.uint8)
    for k in range(10):
        rows = slice(4 + 2 * k, 6 + 2 * k)
        images[labels == k, rows, 4:24] = 255
    return images, labels.to(torch.uint8)


def write_idx(path: Path, data: torch.Tensor) -> None:
    magic = 0x00000800 | data.dim()
    header = struct.pack(f">I{data.dim()}I", magic, *data.shape)
    path.write_bytes(header + data.contiguous().numpy().tobytes())


def write_mnist(root: Path, train: int = FIXTURE_TRAIN, test: int = FIXTURE_TEST) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = synthetic_digits(count, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def fixture_data_dir(tmp_path_factory) -> Path:
    """A data folder with tiny MNIST files (640 train, 160 test) in the real IDX format."""
    return write_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def fresh_data_dir(tmp_path) -> Path:
    """A private copy of the tiny files, for tests that damage them."""
    return write_mnist(tmp_path / "data")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    env = os.environ.get("MNIST_DATA_DIR")
    if not env:
        pytest.skip("MNIST_DATA_DIR is not set (CI sets it to ../shared/data)")
    return Path(env).resolve()


# Overrides that make a run fit the tiny files and finish in seconds.
FAST = [
    "data.val_size=128",
    "trainer.max_epochs=1",
    "callbacks.console_report.print_every_n_batches=0",
]


def compose(overrides: list[str], output_dir: Path):
    """The train config as @hydra.main would compose it, with the run folder set explicitly."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mnist_lightning.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def run_module(
    module: str, *args: str, data_dir: Path | None = None, timeout: int = 240, cwd: Path = ROOT
):
    """Run `python -m module args...` as a user would; returns the CompletedProcess."""
    env = dict(os.environ)
    if data_dir is not None:
        env["MNIST_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
