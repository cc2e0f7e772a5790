"""The package as a user installs it: from a wheel, with its configs inside, run from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_a_command_runs_from_the_wheel_outside_the_checkout(
    trained_run, fixture_data_dir, tmp_path
):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    source = tmp_path / "source"  # (setuptools builds in the source tree: not in the checkout)
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "mnist_lightning", "hydra_plugins"):
        if (ROOT / part).is_dir():
            shutil.copytree(
                ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / part, source / part)
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
