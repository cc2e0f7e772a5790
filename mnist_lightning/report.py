"""Sweep summaries: one row per job of a multirun folder, best first.

Writes `summary.csv`, `summary.md` and `summary.png` (validation-accuracy curves of every job
and the final test accuracy per job) into the sweep folder and prints the table. The Hydra
callback `SweepSummary` does this when a multirun ends;
`python -m mnist_lightning.report <multirun folder>` rebuilds it for any finished or partly
failed sweep.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from mnist_lightning.atomic import write_text_atomically

log = logging.getLogger(__name__)

COLUMNS = (
    "job",
    "overrides",
    "status",
    "val/acc_best",
    "test/acc",
    "test/loss",
    "epochs",
    "seconds",
)


def _job_overrides(job_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    return [str(item) for item in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]


def _job_order(job_dir: Path) -> tuple[int, str]:
    return (int(job_dir.name), "") if job_dir.name.isdigit() else (sys.maxsize, job_dir.name)


def collect_jobs(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every job folder of a sweep as a row, and the overrides that all jobs share."""
    job_dirs = sorted(
        (d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()),
        key=_job_order,
    )
    overrides = {d: _job_overrides(d) for d in job_dirs}
    common = set.intersection(*(set(o) for o in overrides.values())) if len(job_dirs) > 1 else set()
    rows = []
    for job_dir in job_dirs:
        row: dict[str, Any] = {
            "job": job_dir.name,
            "overrides": " ".join(o for o in overrides[job_dir] if o not in common) or "(none)",
            "history": {},
        }
        metrics_file, failure_file = job_dir / "metrics.json", job_dir / "failure.json"
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            row.update(
                status="ok",
                seconds=metrics.get("fit_seconds"),
                epochs=metrics.get("epochs"),
                history=metrics.get("history", {}),
                **{k: metrics.get(k) for k in ("val/acc_best", "test/acc", "test/loss")},
            )
        elif failure_file.is_file():
            failure = json.loads(failure_file.read_text())
            first_line = (failure.get("message") or failure.get("error", "")).strip().splitlines()
            row["status"] = f"failed: {first_line[0][:160] if first_line else failure.get('error')}"
        else:
            row["status"] = "failed: no metrics.json (killed, crashed, or still running)"
        rows.append(row)
    # Best first by validation (the test set is not for choosing); failures last.
    rows.sort(
        key=lambda r: (
            r["status"] != "ok",
            -(r.get("val/acc_best") or 0.0),
            -(r.get("test/acc") or 0.0),
        )
    )
    return rows, [o for o in overrides[job_dirs[0]] if o in common] if job_dirs else []


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def summary_figure(rows: list[dict[str, Any]]):
    from mnist_lightning.training import figures

    plt = figures.plt
    figure, (curves, bars) = plt.subplots(
        1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]}
    )
    for row in rows:
        accuracy = row["history"].get("val/acc", [])
        if accuracy:
            curves.plot(
                range(1, len(accuracy) + 1),
                accuracy,
                marker="o",
                markersize=3,
                label=row["overrides"],
            )
    curves.set(xlabel="epoch", ylabel="val/acc", title="validation accuracy per epoch")
    curves.xaxis.get_major_locator().set_params(integer=True)
    curves.grid(alpha=0.3)
    if curves.lines:
        curves.legend(fontsize=7)
    done = [r for r in rows if r["status"] == "ok" and r.get("test/acc") is not None]
    bars.barh(
        [r["overrides"] for r in done][::-1], [r["test/acc"] for r in done][::-1], color="tab:blue"
    )
    for y, row in enumerate(done[::-1]):
        bars.text(row["test/acc"], y, f" {row['test/acc']:.4f}", va="center", fontsize=8)
    if done:
        low = min(r["test/acc"] for r in done)
        bars.set_xlim(max(0.0, low - 0.05), 1.0)
    bars.set(xlabel="test/acc", title="final test accuracy")
    bars.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    return figure


def write_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write summary.csv, summary.md and summary.png into the sweep folder; print the table."""
    from mnist_lightning.training import figures

    sweep_dir = Path(sweep_dir)
    rows, common = collect_jobs(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir} holds no Hydra job folders (*/.hydra/overrides.yaml)")
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(
        {k: _cell(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows
    )
    write_text_atomically(sweep_dir / "summary.csv", text.getvalue())
    table = markdown_table(rows)
    header = f"Sweep {sweep_dir}\n\nCommon overrides: {' '.join(common) or '(none)'}\n\n"
    write_text_atomically(sweep_dir / "summary.md", header + table + "\n")
    figures.save(summary_figure(rows), sweep_dir / "summary.png")
    failed = sum(r["status"] != "ok" for r in rows)
    log.info("%s%s\n%d jobs, %d failed; summary in %s", header, table, len(rows), failed, sweep_dir)
    return rows


class SweepSummary(Callback):
    """Hydra callback: summarise a multirun in its folder when it ends."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        write_summary(config.hydra.sweep.dir)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mnist_lightning.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun folder, e.g. outputs/multirun/<date-time>"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.sweep_dir.is_dir():
        log.error(
            "error: %s is not a folder; pass a multirun folder such as outputs/multirun/<date-time>",
            args.sweep_dir,
        )
        return 2
    try:
        write_summary(args.sweep_dir)
    except FileNotFoundError as error:
        log.error("error: %s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
