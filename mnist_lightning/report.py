"""Sweep summaries: one row per job of a multirun folder, best first.

Writes `summary.csv`, `summary.md` and `summary.png` (validation-accuracy curves of every job
and the final test accuracy per job) into the sweep folder and prints the table. The Hydra
callback `SweepSummary` (hydra_callbacks.py) does this when a multirun ends;
`python -m mnist_lightning.report <multirun folder>` rebuilds it for any finished or partly
failed sweep.

A sweep folder is data: its files are parsed, never resolved (an interpolation in a job's
overrides.yaml stays text) or run, and a job whose files cannot be read is a row saying why.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.command import command
from mnist_lightning.doors.settings import is_number
from mnist_lightning.errors import UserError, first_line, one_line
from mnist_lightning.folders import DamagedFile, read_json, read_yaml
from mnist_lightning.training import figures

log = logging.getLogger(__name__)
# What the figures draw of a sweep folder (the tables list every job): a few MB of job files
# could otherwise ask for thousands of curves, panels or legend entries (minutes of drawing,
# or an image over matplotlib's 65,536 pixels a side).
SHOWN_JOBS = 20  # the best 20 in summary.png, the first 20 in gradient_flow.png
SHOWN_LAYERS = 12  # a panel's layers (this project's networks have 3 to 5 weight layers)
LABEL_CHARS = 60

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


class Unreadable(Exception):
    """A job's file that is not what the train command writes."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except DamagedFile as error:
        raise Unreadable(str(error).removeprefix(f"{path.parent}/")) from None
    if not isinstance(data, dict):
        raise Unreadable(f"{path.name} is not a JSON object")
    return data


def _job_overrides(job_dir: Path) -> list[str]:
    """A job's overrides as written: plain text, nothing resolved."""
    try:
        overrides = read_yaml(job_dir / ".hydra" / "overrides.yaml")
    except DamagedFile:
        raise Unreadable(".hydra/overrides.yaml is not valid YAML") from None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise Unreadable(".hydra/overrides.yaml is not a list of overrides")
    return overrides


def _number(value: Any, name: str, high: float = math.inf) -> float | None:
    """A metric as the train command writes it: a finite number from 0 (to 1 for an accuracy)."""
    if value is None:
        return None
    if not is_number(value) or not 0 <= value <= high or not math.isfinite(value):
        unit = "an accuracy (0 to 1)" if high == 1 else "a finite number, at least 0"
        raise Unreadable(f"metrics.json: {name} is not {unit}")
    return float(value)


def _history(value: Any, gaps: bool = False) -> dict[str, list[float]]:
    """Lists of numbers by name; `gaps`: a per-epoch metric is null in an epoch that did not
    measure it (a validation every few epochs)."""
    if value is None:
        return {}

    def ok(name: str, x: Any) -> bool:
        if x is None:
            return gaps and not name.startswith("val_check/")
        return is_number(x) and math.isfinite(x)

    if not isinstance(value, dict) or not all(
        isinstance(v, list) and all(ok(k, x) for x in v) for k, v in value.items()
    ):
        raise Unreadable("metrics.json: a history is not lists of finite numbers by name")
    return value


def _job_order(job_dir: Path) -> tuple[int, str]:
    return (int(job_dir.name), "") if job_dir.name.isdigit() else (sys.maxsize, job_dir.name)


def _job_row(job_dir: Path) -> dict[str, Any]:
    """A job folder as a row of the summary; a file it cannot read makes the row say so."""
    metrics_file, failure_file = job_dir / "metrics.json", job_dir / "failure.json"
    if metrics_file.is_file():
        metrics = _read_json(metrics_file)
        epochs = metrics.get("epochs")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)):
            raise Unreadable("metrics.json: epochs is not a whole number")
        return {
            "status": "ok",
            "seconds": _number(metrics.get("fit_seconds"), "fit_seconds"),
            "epochs": epochs,
            "history": _history(metrics.get("history"), gaps=True),
            "gradient_norms": _history(metrics.get("gradient_norms")),
            **{k: _number(metrics.get(k), k, 1) for k in ("val/acc_best", "test/acc")},
            "test/loss": _number(metrics.get("test/loss"), "test/loss"),
        }
    if failure_file.is_file():
        failure = _read_json(failure_file)
        reason = failure.get("message") or failure.get("error") or ""
        lines = str(reason).strip().splitlines()
        return {"status": f"failed: {lines[0][:160] if lines else 'no reason given'}"}
    return {"status": "failed: no metrics.json (killed, crashed, or still running)"}


def collect_jobs(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every job folder of a sweep as a row, and the overrides that all jobs share."""
    job_dirs = sorted(
        (d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()),
        key=_job_order,
    )
    overrides: dict[str, list[str]] = {}  # by job, as far as they could be read
    rows = []
    for job_dir in job_dirs:
        row: dict[str, Any] = {"job": job_dir.name, "history": {}}
        try:
            overrides[job_dir.name] = _job_overrides(job_dir)
            row.update(_job_row(job_dir))
        except Unreadable as error:
            row["status"] = f"unreadable: {error}"
        except Exception as error:  # noqa: BLE001 - whatever a job's files break is that row's
            row["status"] = f"unreadable: {type(error).__name__}: {first_line(error)[:120]}"
        rows.append(row)
    readable = list(overrides.values())
    common = set.intersection(*(set(o) for o in readable)) if len(readable) > 1 else set()
    for row in rows:
        given = overrides.get(row["job"], [])
        row["overrides"] = " ".join(o for o in given if o not in common) or "(none)"
    # Best first by validation (the test set is not for choosing); failures last.
    rows.sort(
        key=lambda r: (
            r["status"] != "ok",
            -(r.get("val/acc_best") or 0.0),
            -(r.get("test/acc") or 0.0),
        )
    )
    first = readable[0] if readable else []
    return rows, [o for o in first if o in common]


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if column == "seconds":
            return f"{value:.2f}"  # as metrics.json keeps them
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return str(value)


def _markdown(value: Any, column: str) -> str:
    # One line, one cell, no control character (the table is printed: an escape sequence read
    # from a job's files would drive the terminal).
    return one_line(" ".join(_cell(value, column).split())).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_markdown(row.get(c), c) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def _label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 3] + "..."


def _first_layers(norms: dict[str, list[float]]) -> dict[str, list[float]]:
    """A job's gradient norms as gradient_flow.png draws them: the steps and SHOWN_LAYERS layers."""
    layers = [(_label(k), v) for k, v in norms.items() if k != "step"][:SHOWN_LAYERS]
    return {"step": norms.get("step", []), **dict(layers)}


def summary_figure(rows: list[dict[str, Any]]):
    """summary.png: the best SHOWN_JOBS jobs (`rows` come best first)."""
    shown = f" (best {SHOWN_JOBS} of {len(rows)})" if len(rows) > SHOWN_JOBS else ""
    return figures.sweep_summary(rows[:SHOWN_JOBS], _label, shown)


def _save_figure(draw: Callable[[], Any], path: Path) -> None:
    """A figure of a sweep's data. Its values are checked where they are read (`_job_row`); any
    other way they make matplotlib fail is still one line, and the tables stand."""
    try:
        figures.save(draw(), path)
    except Exception as error:  # noqa: BLE001 - whatever a job's values make fail is theirs
        figures.plt.close("all")
        log.warning("%s not drawn (%s: %s)", path.name, type(error).__name__, first_line(error))


def write_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write summary.csv, summary.md and summary.png into the sweep folder; print the table."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(
            f"{sweep_dir} is not a folder; pass a multirun folder such as "
            "outputs/multirun/<date-time>"
        )
    rows, common = collect_jobs(sweep_dir)
    if not rows:
        raise UserError(f"{sweep_dir} holds no Hydra job folders (*/.hydra/overrides.yaml)")
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(
        {k: _cell(v, k) if isinstance(v, float) else v for k, v in r.items()} for r in rows
    )
    write_text_atomically(sweep_dir / "summary.csv", text.getvalue())
    table = markdown_table(rows)
    header = f"Sweep {sweep_dir}\n\nCommon overrides: {one_line(' '.join(common)) or '(none)'}\n\n"
    write_text_atomically(sweep_dir / "summary.md", header + table + "\n")
    _save_figure(lambda: summary_figure(rows), sweep_dir / "summary.png")
    in_job_order = sorted(rows, key=lambda r: _job_order(sweep_dir / r["job"]))
    flows = {
        _label(r["overrides"]): _first_layers(r["gradient_norms"])
        for r in in_job_order[:SHOWN_JOBS]
        if r.get("gradient_norms")
    }
    varies_activation = any("model.activation=" in row["overrides"] for row in rows)
    if flows and varies_activation:  # the lesson's vanishing gradients, side by side
        _save_figure(lambda: figures.gradient_flow(flows), sweep_dir / "gradient_flow.png")
    failed = sum(r["status"] != "ok" for r in rows)
    log.info("%s%s\n%d jobs, %d failed; summary in %s", header, table, len(rows), failed, sweep_dir)
    return rows


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lightning.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun folder, e.g. outputs/multirun/<date-time>"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_summary(args.sweep_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
