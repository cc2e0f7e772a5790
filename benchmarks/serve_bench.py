"""`make bench-serve`: load on `python -m mnist_lightning.serve`, with and without batching.

64 concurrent clients send 5,000 requests, each a real MNIST test digit as a base64 PNG (what
the drawing page sends). For the default server (dynamic batching) and for
`max_batch_size=1`: throughput, p50/p99 latency, errors, and the answers' accuracy beside that
of `evaluate` on the same images (the checkpoint's own test-set answers).

    python benchmarks/serve_bench.py [--ckpt <run or .ckpt>] [--requests 5000] [--clients 64]

Without --ckpt, a model is trained for one epoch on $MNIST_DATA_DIR first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: Path, port: int, overrides: list[str]) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_lightning.serve",
            f"ckpt_path={ckpt}",
            f"port={port}",
            *overrides,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    import urllib.request

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.read() == b"ok":
                    return process
        except OSError:
            time.sleep(0.2)
    stop(process)
    sys.exit("the server did not start")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    time.sleep(1)
    subprocess.run(["pkill", "-KILL", "-g", str(process.pid)], check=False)


async def load(port: int, bodies: list[bytes], clients: int) -> tuple[float, list[float], list]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/predict"
    latencies: list[float] = []
    answers: list = [None] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            try:
                async with session.post(
                    url, data=bodies[i], headers={"Content-Type": "application/json"}
                ) as response:
                    payload = await response.json()
                    answers[i] = payload["digit"] if response.status == 200 else None
            except (aiohttp.ClientError, asyncio.TimeoutError):
                answers[i] = None
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        seconds = time.perf_counter() - started
    return seconds, latencies, answers


def train_quick_checkpoint(folder: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_lightning.train",
            "experiment=relu_adam",
            "trainer.max_epochs=1",
            "logger=none",
            f"hydra.run.dir={folder}",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ckpt", type=Path, help="a run folder or .ckpt (default: train one epoch)"
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from mnist_lightning.data.datamodule import to_model_input
    from mnist_lightning.data.mnist_files import default_data_dir, load_mnist
    from mnist_lightning.training.checkpoints import load_trained

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"python {platform.python_version()}, torch {torch.__version__}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        ckpt = args.ckpt or train_quick_checkpoint(Path(scratch) / "run")
        images, labels = load_mnist(default_data_dir(), download=False)["test"]
        count = min(args.requests, len(labels))
        images, labels = images[:count], labels[:count]
        trained = load_trained(ckpt)
        model, settings = trained.model, trained.data
        with torch.no_grad():
            direct = model(to_model_input(images, settings.get("normalize", True))).argmax(dim=1)
        evaluate_accuracy = float((direct == labels).float().mean())
        bodies = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image[0].numpy(), mode="L").save(buffer, format="PNG")
            bodies.append(
                json.dumps({"image": base64.b64encode(buffer.getvalue()).decode()}).encode()
            )

        rows = []
        for name, overrides in (
            ("dynamic batching (max_batch_size=32)", []),
            ("max_batch_size=1", ["max_batch_size=1"]),
        ):
            port = free_port()
            server = start_server(ckpt, port, overrides)
            try:
                asyncio.run(load(port, bodies[:200], args.clients))  # warm up
                seconds, latencies, answers = asyncio.run(load(port, bodies, args.clients))
            finally:
                stop(server)
            errors = sum(a is None for a in answers)
            correct = sum(a == int(y) for a, y in zip(answers, labels, strict=True))
            agree = sum(a == int(d) for a, d in zip(answers, direct, strict=True))
            quantiles = statistics.quantiles(latencies, n=100)
            rows.append(
                (
                    name,
                    count / seconds,
                    quantiles[49] * 1000,
                    quantiles[98] * 1000,
                    errors,
                    correct / count,
                    agree / count,
                )
            )
            print(
                f"{name}: {count / seconds:.0f} requests/s, p50 {quantiles[49] * 1000:.0f} ms, "
                f"p99 {quantiles[98] * 1000:.0f} ms, {errors} errors, accuracy {correct / count:.4f} "
                f"(evaluate {evaluate_accuracy:.4f}, same answer {agree / count:.2%})",
                flush=True,
            )

    print(
        f"\n{count} requests from {args.clients} concurrent clients, 28x28 PNG digits (base64 JSON):"
    )
    print("| server | requests/s | p50 ms | p99 ms | errors | accuracy | same answer as evaluate |")
    print("|---|---|---|---|---|---|---|")
    for name, rate, p50, p99, errors, accuracy, agree in rows:
        print(
            f"| {name} | {rate:.0f} | {p50:.0f} | {p99:.0f} | {errors} | {accuracy:.4f} | {agree:.2%} |"
        )
    print(
        f"goal: 0 errors, at least 300 requests/s, p99 under 250 ms (evaluate: {evaluate_accuracy:.4f})"
    )


if __name__ == "__main__":
    main()
