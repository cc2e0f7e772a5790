"""`make bench`: time whole commands on real MNIST and print their ratios.

1. the lesson's plain PyTorch script (benchmarks/lesson_loop.py), 10 epochs + test, and
   `python -m mnist_lightning.train` with the default config (10 epochs, validation, test,
   TensorBoard, checkpoints), alternately, `--repeat` times; the median of the pairs' ratios
   is reported, with the medians of the times;
2. the floor (benchmarks/raw_loop.py: epochs of the same work with no framework) just before
   and just after each project run, against the project's median epoch of that run; and
   Lightning's own floor (benchmarks/lightning_loop.py: the project's model and data module
   under a bare Trainer), which shows how much of an epoch is Lightning's loop itself;
3. contention: one epoch of the default command alone and beside a second training, with the
   default `cpu_threads=1` and with torch's default threads (`cpu_threads=null`);
4. start-up (benchmarks/startup.py): `import torch`, `train --help`, a refused bad value,
   `predict` of one PNG, `export`, and `serve` to its first answer, medians of five.

Each runs as its own process; peak memory is the child's max RSS.
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

from startup import startup_table

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "mnist_lightning.train"]


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen, started: float) -> tuple[float, float, str]:
    """Wait for a process; return (wall seconds, peak RSS in MB, output)."""
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.time() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(process.args)} failed ({process.returncode}):\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, output


def run(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    started = time.time()
    return finish(start(command, env), started)


def last_value(output: str, key: str) -> float:
    return float([line for line in output.splitlines() if line.startswith(key)][-1].split()[-1])


def epoch_median(script: list[str], env: dict[str, str]) -> float:
    """The `epoch_seconds_median` a benchmark script prints."""
    _, _, output = run([sys.executable, *script], env)
    return last_value(output, "epoch_seconds_median")


def train_run(overrides: list[str], env: dict[str, str]) -> tuple[float, float, dict, float]:
    """The project's train command in a temporary run folder: seconds, peak MB, metrics.json,
    and the seconds from process start to the start of training."""
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.time()
        seconds, peak_mb, _ = run([*TRAIN, f"hydra.run.dir={run_dir}", *overrides], env)
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return seconds, peak_mb, metrics, metrics["training_started_at"] - started


def contention(env: dict[str, str], threads: str) -> tuple[float, float]:
    """One epoch of the default command: its epoch time alone, and beside a second training."""
    overrides = ["trainer.max_epochs=1", "test=false", f"cpu_threads={threads}"]
    _, _, alone, _ = train_run(overrides, env)
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        started = time.time()
        processes = [
            start([*TRAIN, f"hydra.run.dir={folder}", *overrides], env)
            for folder in (first, second)
        ]
        for process in processes:
            finish(process, started)
        epochs = [
            json.loads((Path(folder) / "metrics.json").read_text())["history"]["epoch_seconds"][0]
            for folder in (first, second)
        ]
    return alone["history"]["epoch_seconds"][0], max(epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat",
        type=int,
        default=int(os.environ.get("BENCH_REPEAT", 2)),
        help="lesson/project pairs, run alternately; medians are reported (default 2)",
    )
    parser.add_argument("--no-contention", action="store_true", help="skip the contention runs")
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
    floor_ratios, lightning_ratios, textbook_ratios = [], [], []
    for pair in range(1, args.repeat + 1):
        lesson_s, lesson_mb, lesson_out = run([sys.executable, "benchmarks/lesson_loop.py"], env)
        lesson_times.append(lesson_s)
        print(
            f"[{pair}] lesson loop: {lesson_s:6.1f} s  peak {lesson_mb:5.0f} MB  "
            f"test/acc {last_value(lesson_out, 'test/acc'):.4f}",
            flush=True,
        )
        floor_before = epoch_median(["benchmarks/raw_loop.py", "5", "1"], env)
        project_s, project_mb, metrics, startup_s = train_run(args.overrides, env)
        epoch_s = statistics.median(metrics["history"]["epoch_seconds"])
        project_times.append(project_s)
        project_runs.append((project_mb, startup_s, epoch_s))
        print(
            f"[{pair}] project:     {project_s:6.1f} s  peak {project_mb:5.0f} MB  "
            f"test/acc {metrics['test/acc']:.4f} (loss {metrics['test/loss']:.4f})  "
            f"steps {metrics['global_step']}  start-up {startup_s:.1f} s  "
            f"epoch median {epoch_s:.2f} s (validation included)",
            flush=True,
        )
        lightning_epoch = epoch_median(["benchmarks/lightning_loop.py", "5", "1"], env)
        textbook_epoch = epoch_median(["benchmarks/lightning_loop.py", "5", "1", "textbook"], env)
        textbook_ratios.append(lightning_epoch / textbook_epoch)
        floor_after = epoch_median(["benchmarks/raw_loop.py", "5", "1"], env)
        # The floor on both sides of the project run: a drift of the machine's speed during the
        # pair moves both sides of the ratio.
        floor_epoch = (floor_before + floor_after) / 2
        floor_ratios.append(epoch_s / floor_epoch)
        lightning_ratios.append(lightning_epoch / floor_epoch)
        print(
            f"[{pair}] floor:       epoch median {floor_before:.2f} s before, {floor_after:.2f} s "
            f"after (validation included, 1 thread): project epoch / floor "
            f"{epoch_s / floor_epoch:.2f}",
            flush=True,
        )
        print(
            f"[{pair}] lightning:   epoch median {lightning_epoch:.2f} s (the project's model and "
            f"data under a bare Trainer): / floor {lightning_epoch / floor_epoch:.2f}; "
            f"a textbook module's {textbook_epoch:.2f} s: the project's / textbook "
            f"{lightning_epoch / textbook_epoch:.2f} (goal <= 0.80)",
            flush=True,
        )
    if not args.no_contention:
        for threads in ("1", "null"):
            alone, beside = contention(env, threads)
            print(
                f"contention, cpu_threads={threads:<4}: epoch {alone:5.2f} s alone, "
                f"{beside:5.2f} s beside a second training ({beside / alone:.1f}x)",
                flush=True,
            )

    lesson_s, project_s = statistics.median(lesson_times), statistics.median(project_times)
    peak_mb = max(mb for mb, _, _ in project_runs)
    ratios = [p / q for p, q in zip(project_times, lesson_times, strict=True)]
    print()
    print(f"medians of {args.repeat}: lesson loop {lesson_s:.1f} s, project {project_s:.1f} s")
    # The median of the pairs' ratios, as for the floor below: each ratio compares two runs made
    # minutes apart, which is what alternating them is for.
    print(
        f"project / lesson loop (whole command): {statistics.median(ratios):.2f}   (goal <= 0.60; "
        f"pairs {', '.join(f'{r:.2f}' for r in ratios)}; ratio of the medians "
        f"{project_s / lesson_s:.2f})"
    )
    print(
        f"project epoch / floor epoch:           {statistics.median(floor_ratios):.2f}   "
        f"(goal <= 2.0; pairs {', '.join(f'{r:.2f}' for r in floor_ratios)})"
    )
    print(
        f"bare-Trainer epoch / floor epoch:      {statistics.median(lightning_ratios):.2f}   "
        f"(Lightning's loop alone; pairs {', '.join(f'{r:.2f}' for r in lightning_ratios)})"
    )
    print(
        f"project module / textbook module epoch: {statistics.median(textbook_ratios):.2f}   "
        f"(goal <= 0.80, both under a bare Trainer; pairs "
        f"{', '.join(f'{r:.2f}' for r in textbook_ratios)})"
    )
    startup = statistics.median(s for _, s, _ in project_runs)
    print(f"project start-up (until training):     {startup:.1f} s")
    print(f"project peak memory:                   {peak_mb:.0f} MB (goal < 2048)")
    print()
    print("\n".join(startup_table(env)))


if __name__ == "__main__":
    main()
