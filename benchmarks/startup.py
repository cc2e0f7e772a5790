"""How long the commands take to start: the median of five runs of each, beside `import torch`.

`python benchmarks/startup.py` (also the last part of `make bench`): `import torch` alone,
`train --help`, `train` with a bad value (its one-line refusal), `predict` of one PNG, `export`
of one checkpoint, and the time from `serve` to its first answer. Each is a new process, as a
user starts it; the checkpoint is one of a short run on the data of $MNIST_DATA_DIR.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"train --help": 0.6, "predict one PNG": 1.5, "export one checkpoint": 1.5}


def timed(command: list[str], env: dict[str, str], expect: int = 0) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != expect:
        sys.exit(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-2000:]}")
    return seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_first_answer(run_dir: Path, png: Path, env: dict[str, str]) -> float:
    """Seconds from starting `serve` to its first answer to POST /predict."""
    port = free_port()
    body = json.dumps({"image": base64.b64encode(png.read_bytes()).decode()}).encode()
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "mnist_lightning.serve", f"ckpt_path={run_dir}", f"port={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/predict", body, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except OSError:
                if server.poll() is not None:
                    sys.exit("serve stopped before answering")
                time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def startup_table(env: dict[str, str], runs: int = 5) -> list[str]:
    """The table's lines: each command's median of `runs` and its ratio to `import torch`."""
    from PIL import Image

    python = [sys.executable]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        run_dir = scratch / "run"
        short = ["trainer.max_epochs=1", "+trainer.limit_train_batches=20", "logger=none"]
        timed([*python, "-m", "mnist_lightning.train", *short, f"hydra.run.dir={run_dir}"], env)
        png = scratch / "digit.png"
        digit = Image.new("L", (28, 28))
        digit.paste(255, (12, 5, 16, 23))  # a one
        digit.save(png)
        commands = {
            "import torch": [*python, "-c", "import torch"],
            "train --help": [*python, "-m", "mnist_lightning.train", "--help"],
            "train, a bad value": [
                *python,
                "-m",
                "mnist_lightning.train",
                "data.batch_size=0",
                f"hydra.run.dir={scratch / 'refused'}",
            ],
            "predict one PNG": [
                *python,
                "-m",
                "mnist_lightning.predict",
                f"ckpt_path={run_dir}",
                f"inputs=[{png}]",
                f"hydra.run.dir={scratch / 'predict'}",
            ],
            "export one checkpoint": [
                *python,
                "-m",
                "mnist_lightning.export",
                f"ckpt_path={run_dir}",
                f"output={scratch / 'model.onnx'}",
                f"hydra.run.dir={scratch / 'export'}",
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in [*commands, "serve, first answer"]}
        for _ in range(runs):  # in turn, so that a drift of the machine's speed hits them all
            for name, command in commands.items():
                times[name].append(timed(command, env, expect=1 if "bad" in name else 0))
            times["serve, first answer"].append(serve_first_answer(run_dir, png, env))
    torch_s = statistics.median(times["import torch"])
    lines = [f"{'command':<24} {'median s':>8}  {'/ import torch':>14}  goal"]
    for name, values in times.items():
        median = statistics.median(values)
        goal = f"<= {GOALS[name]}" if name in GOALS else ""
        lines.append(f"{name:<24} {median:8.2f}  {median / torch_s:14.2f}  {goal}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    args = parser.parse_args()
    env = dict(os.environ)
    env.setdefault("MNIST_DATA_DIR", str(ROOT / "data"))
    print("\n".join(startup_table(env, args.runs)))


if __name__ == "__main__":
    main()
