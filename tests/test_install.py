"""The package as a user installs it: from a wheel, with its configs inside, run from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def copy_of_the_checkout(source: Path) -> Path:
    """What a build needs of the checkout, copied (builds and installs never touch the real one)."""
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "conf", "mnist_lightning", "hydra_plugins"):
        if (ROOT / part).is_dir():
            shutil.copytree(
                ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / part, source / part)
    return source


def test_a_command_runs_from_the_wheel_outside_the_checkout(
    trained_run, fixture_data_dir, tmp_path
):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    source = copy_of_the_checkout(tmp_path / "source")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "--wheel-dir", str(wheels), str(source)], check=True, timeout=300)
    (wheel,) = wheels.glob("mnist_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mnist_lightning/conf/train.yaml" in names
    assert "mnist_lightning/conf/hydra/job_logging/messages.yaml" in names
    assert "mnist_lightning/serve/draw.html" in names
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    subprocess.run([*install, str(site), str(wheel)], check=True, timeout=300)
    work.mkdir()
    # Nothing on the path from the checkout: the package, its configs and its console script
    # come from the installed wheel (PYTHONPATH is searched before the checkout's editable path).
    env = {**os.environ, "PYTHONPATH": str(site), "MNIST_DATA_DIR": str(fixture_data_dir)}
    probe = "import mnist_lightning, sys; print(mnist_lightning.__file__)"
    where = subprocess.run(
        [sys.executable, "-P", "-c", probe], cwd=work, env=env, capture_output=True, text=True
    )
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    result = subprocess.run(
        [str(site / "bin" / "mnist-evaluate"), f"ckpt_path={trained_run}"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (evaluation,) = (work / "outputs").glob("evaluate/*/eval.json")
    assert json.loads(evaluation.read_text())["images"] == 160
    assert not (site / "outputs").exists()  # outputs go where the command runs


def test_an_editable_install_reads_the_checkouts_conf_without_reinstalling(tmp_path):
    """`pip install -e .` (make install): the configs are the checkout's top-level conf/, so an
    edit of a YAML file takes effect at the next command, with nothing installed again."""
    source, venv, work = (
        copy_of_the_checkout(tmp_path / "source"),
        tmp_path / "venv",
        tmp_path / "w",
    )
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (site,) = (venv / "lib").glob("python*/site-packages")
    # torch, Hydra and the build backend come from this environment, not from a download.
    (site / "this_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*install, "-e", str(source)], check=True, timeout=300)
    work.mkdir()

    def learning_rate() -> str:
        shown = subprocess.run(
            [str(python), "-m", "mnist_lightning.train", "--cfg", "job", "--package", "optimizer"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode == 0, shown.stdout[-2000:] + shown.stderr[-2000:]
        return next(line for line in shown.stdout.splitlines() if line.strip().startswith("lr:"))

    assert learning_rate().split() == ["lr:", "0.2"]  # the lesson's, from the copy's conf/
    sgd = source / "conf" / "optimizer" / "sgd.yaml"
    sgd.write_text(sgd.read_text().replace("lr: 0.2", "lr: 0.123"))
    assert learning_rate().split() == ["lr:", "0.123"]
