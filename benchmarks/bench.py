"""`make bench`: time whole commands on real MNIST and print their ratios.

1. the lesson's plain PyTorch script (benchmarks/lesson_loop.py), 10 epochs + test;
2. `python -m mnist_lightning.train` with the default config (10 epochs, validation, test,
   TensorBoard, checkpoints);
3. the raw floor (benchmarks/raw_loop.py): same network, bare loop over pre-loaded tensors.

Each runs as its own process; the lesson loop and the project alternate `--repeat` times
(default 2) and their medians are compared. Peak memory is the child's max RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak RSS in MB, stdout)."""
    started = time.time()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.time() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, output


def last_value(output: str, key: str) -> float:
    return float([line for line in output.splitlines() if line.startswith(key)][-1].split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat",
        type=int,
        default=int(os.environ.get("BENCH_REPEAT", 2)),
        help="lesson/project pairs, run alternately; medians are reported (default 2)",
    )
    parser.add_argument("overrides", nargs="*", help="for the project, e.g. trainer.max_epochs=3")
    args = parser.parse_args()
    env = dict(os.environ)
    env.setdefault("MNIST_DATA_DIR", str(ROOT / "data"))
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, device {device}, "
        f"{platform.platform()}, python {platform.python_version()}, torch {torch.__version__}"
    )

    # Alternating pairs: this machine's speed drifts by tens of percent within minutes, and
    # a drift then hits both sides of a ratio instead of one.
    lesson_times, project_times, project_runs = [], [], []
    for pair in range(1, args.repeat + 1):
        lesson_s, lesson_mb, lesson_out = run([sys.executable, "benchmarks/lesson_loop.py"], env)
        lesson_times.append(lesson_s)
        print(
            f"[{pair}] lesson loop: {lesson_s:6.1f} s  peak {lesson_mb:5.0f} MB  "
            f"test/acc {last_value(lesson_out, 'test/acc'):.4f}",
            flush=True,
        )
        with tempfile.TemporaryDirectory() as run_dir:
            started = time.time()
            project_s, project_mb, _ = run(
                [sys.executable, "-m", "mnist_lightning.train", f"hydra.run.dir={run_dir}"]
                + args.overrides,
                env,
            )
            metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        startup_s = metrics["first_step_at"] - started
        epoch_s = statistics.median(metrics["history"]["epoch_seconds"])
        project_times.append(project_s)
        project_runs.append((project_mb, startup_s, epoch_s))
        print(
            f"[{pair}] project:     {project_s:6.1f} s  peak {project_mb:5.0f} MB  "
            f"test/acc {metrics['test/acc']:.4f} (loss {metrics['test/loss']:.4f})  start-up {startup_s:.1f} s  "
            f"epoch median {epoch_s:.2f} s (validation included)",
            flush=True,
        )

    floor_s, _, floor_out = run([sys.executable, "benchmarks/raw_loop.py", "5"], env)
    floor_epoch = last_value(floor_out, "epoch_seconds_median")
    print(
        f"raw floor:       {floor_s:6.1f} s for 5 epochs (whole process)  "
        f"epoch median {floor_epoch:.2f} s"
    )
    lesson_s, project_s = statistics.median(lesson_times), statistics.median(project_times)
    epoch_s = statistics.median(epoch for _, _, epoch in project_runs)
    peak_mb = max(mb for mb, _, _ in project_runs)
    ratios = [p / q for p, q in zip(project_times, lesson_times, strict=True)]
    print()
    print(f"medians of {args.repeat}: lesson loop {lesson_s:.1f} s, project {project_s:.1f} s")
    print(
        f"project / lesson loop (whole command): {project_s / lesson_s:.2f}   (goal <= 0.40; "
        f"pairs {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    print(f"project epoch / raw floor epoch:       {epoch_s / floor_epoch:.2f}   (goal <= 2.0)")
    print(
        f"project start-up (until the first step): {statistics.median(s for _, s, _ in project_runs):.1f} s"
    )
    print(f"project peak memory:                   {peak_mb:.0f} MB (goal < 2048)")


if __name__ == "__main__":
    main()
