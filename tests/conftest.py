"""Shared fixtures: tiny MNIST-format IDX files, config composition, subprocess runs."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_lightning.config import hydra_quoted  # noqa: F401 - the tests' own name for it

ROOT = Path(__file__).resolve().parents[1]
# onnxruntime (the export tests) sends usage telemetry from a background thread when imported,
# which the no-network tests would catch; only this variable stops it (not
# disable_telemetry_events(), which comes after the first event).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
FIXTURE_TRAIN, FIXTURE_TEST = 640, 160


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups from the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The serve tests share one model trained on real MNIST and one server (module fixtures of
    test_serve.py): on one xdist worker (make test: --dist loadgroup) they are built once."""
    for item in items:
        if "drawing_case" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("served_model"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """xdist groups by a suffix it adds to the test ids; pytest 9.2 drops it (xdist #1386), and
    the groups are spread silently, each worker building the served model again."""
    grouped = item.config.getoption("loadgroup", default=False)
    if grouped and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail("--dist loadgroup did not group this test: see pytest's pin in pyproject.toml")


def render_digit(digit: int, generator: torch.Generator):
    """A digit drawn with PIL's font at a random size, slant and stroke, as a grey image."""
    from PIL import Image, ImageDraw, ImageFont

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=generator))

    font = ImageFont.load_default(size=int(uniform(38, 60)))
    canvas = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(canvas).text(
        (uniform(14, 30), uniform(4, 18)),
        str(digit),
        fill=255,
        font=font,
        stroke_width=int(uniform(0, 3)),
        stroke_fill=255,
    )
    return canvas.rotate(uniform(-12, 12), resample=Image.BILINEAR)


@functools.lru_cache(maxsize=8)
def synthetic_digits(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-ins for MNIST: rendered digits, made MNIST-like by the project's own preprocessing.

    The class is in the shape (not the position), so the data is learnable and real images of
    these digits can be recognised after preprocessing.
    """
    from mnist_lightning.data.preprocess import to_mnist

    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % 10)[torch.randperm(count, generator=generator)]
    images = torch.stack([to_mnist(render_digit(int(k), generator))[0] for k in labels])
    noise = torch.randint(0, 30, images.shape, generator=generator, dtype=torch.uint8)
    return images.maximum(noise), labels.to(torch.uint8)


def idx_bytes(data: torch.Tensor) -> bytes:
    magic = 0x00000800 | data.dim()
    header = struct.pack(f">I{data.dim()}I", magic, *data.shape)
    return header + data.contiguous().numpy().tobytes()


def fixture_files(train: int = FIXTURE_TRAIN, test: int = FIXTURE_TEST) -> dict[str, bytes]:
    """The four IDX files of the stand-in MNIST, by name."""
    files = {}
    for split, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = synthetic_digits(count, seed)
        files[f"{split}-images-idx3-ubyte"] = idx_bytes(images)
        files[f"{split}-labels-idx1-ubyte"] = idx_bytes(labels)
    return files


def write_mnist(root: Path, train: int = FIXTURE_TRAIN, test: int = FIXTURE_TEST) -> Path:
    """The stand-in files as MNIST, and as Fashion-MNIST (the same names in its own folder)."""
    for folder in ("MNIST", "FashionMNIST"):
        raw = root / folder / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for name, content in fixture_files(train, test).items():
            (raw / name).write_bytes(content)
    return root


def expected_files(files: dict[str, bytes]) -> dict[str, dict]:
    """How the tests declare stand-in files: their MD5s and item counts."""
    return {
        name: {
            "md5": hashlib.md5(content).hexdigest(),
            "items": struct.unpack(">I", content[4:8])[0],
        }
        for name, content in files.items()
    }


def accept_files(files: dict[str, bytes]) -> str:
    """The value of the test-only hook (data/mnist_files.TEST_FILES_VARIABLE) for these files."""
    return json.dumps(expected_files(files))


# The project accepts only the official MNIST files, and the stand-ins that the tests declare
# in their environment (inherited by every command they run); no config or file can.
FIXTURE_EXPECTED = expected_files(fixture_files())
os.environ["MNIST_LIGHTNING_TEST_FILES"] = accept_files(fixture_files())


def load_fixture(data_dir: Path):
    """The stand-in files read as the project reads MNIST."""
    from mnist_lightning.data.mnist_files import load_mnist

    return load_mnist(data_dir, download=False)


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
    "callbacks.epoch_report.print_every_n_batches=0",
]


def compose(overrides: list[str], output_dir: Path):
    """The train config as @hydra.main would compose it, with the run folder set explicitly."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mnist_lightning.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return hydra_compose(
            "train",
            overrides=[*overrides, f"paths.output_dir={hydra_quoted(str(output_dir))}"],
            return_hydra_config=True,  # its choices and overrides are the run's record
        )


def run_module(
    module: str,
    *args: str,
    data_dir: Path | None = None,
    timeout: int = 240,
    cwd: Path = ROOT,
    env_remove: tuple[str, ...] = (),
):
    """Run `python -m module args...` as a user would; returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k not in env_remove}
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


def start_training(args: list[str], data_dir: Path) -> subprocess.Popen:
    """`python -m mnist_lightning.train args...` started in the background, output piped."""
    env = {**os.environ, "MNIST_DATA_DIR": str(data_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_lightning.train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell starts background jobs with SIGINT ignored, and Python then never turns it into
        # KeyboardInterrupt: give the run a terminal's Ctrl-C however the tests were started.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def train_relu_adam(run_dir: Path, data_dir: Path, *overrides: str) -> Path:
    """A quiet ReLU + Adam run on the stand-in files, in `run_dir`: a trained model for tests."""
    from mnist_lightning.train import train

    base = [f"data.data_dir={data_dir}", *FAST, "experiment=relu_adam", "logger=none"]
    train(compose([*base, *overrides], run_dir))
    return run_dir


@pytest.fixture(scope="session")
def trained_run(fixture_data_dir, tmp_path_factory) -> Path:
    """A run trained on the stand-in files (ReLU + Adam, 6 epochs): for the tools and the server."""
    return train_relu_adam(
        tmp_path_factory.mktemp("trained"), fixture_data_dir, "trainer.max_epochs=6"
    )


def gone_pid() -> int:
    """The number of a process that has ended: one started and waited for."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    return int(ended.stdout)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def onnx_session(path: Path):
    """An onnxruntime session on an exported model (its telemetry is off: ORT_DISABLE_TELEMETRY)."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path))
