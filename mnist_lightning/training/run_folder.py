"""A run folder: who owns it, the config it keeps, and how a run in it is continued.

A run's folder holds `run_config.yaml`, the resolved config it was started with. `resume=`
continues with that config, read as data: paths in it are re-anchored to where the folder is
now (it can be moved or copied), and it may name only the classes the project's own configs
name. A run takes a lock on its folder for as long as it works there.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnist_lightning.config import CONFIG_DIR, PROJECT_ROOT, logger_configs
from mnist_lightning.errors import ConfigError, OutputError, UserError

RUN_CONFIG = "run_config.yaml"
LOCK_FILE = ".lock"
# Overrides that say which run to continue, not how: allowed beside resume=.
RESUME_KEYS = ("resume", "ckpt_path")


class RunFolderLock:
    """An exclusive lock on a run folder, released when the run ends or its process dies.

    `flock` locks belong to the open file: the operating system drops them when the process
    exits however it exits, so a crashed run never leaves a stale lock behind.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(
                f"{self.path.parent} is in use by {holder}; wait for that run to end or stop it, "
                "or choose another folder (hydra.run.dir=<folder>)."
            ) from None
        os.ftruncate(fd, 0)
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        os.pwrite(
            fd, f"process {os.getpid()} on {socket.gethostname()} ({command[:200]})".encode(), 0
        )
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)  # releases the lock
            self.fd = None


@cache
def known_targets() -> frozenset[str]:
    """Every class the project's configs name: all that a run_config.yaml may name."""
    targets = set()
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        targets.update(re.findall(r"_target_:\s*([\w.]+)", path.read_text()))
    return frozenset(targets)


def _walk(node: Any, key: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}[{i}]")
    else:
        yield key, node


def _moved(text: str, moves: list[tuple[str, str]]) -> str:
    for old, new in moves:
        if text == old or text.startswith(old + os.sep):
            return new + text[len(old) :]
    return text


def _relocate(node: Any, moves: list[tuple[str, str]]) -> Any:
    """Every string (and dict key) under an old folder, re-anchored under the new one."""
    if isinstance(node, dict):
        return {
            (_moved(k, moves) if isinstance(k, str) else k): _relocate(v, moves)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_relocate(v, moves) for v in node]
    if isinstance(node, str):
        return _moved(node, moves)
    return node


def load_run_config(run_dir: Path) -> tuple[DictConfig, list[tuple[str, str]]]:
    """A run folder's saved config, checked and re-anchored to where the folder is now; and the
    moves made (old folder, new folder)."""
    path = run_dir / RUN_CONFIG
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:  # YAML errors, unreadable file
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path} cannot be read ({detail}); start a new run instead.") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("paths"), dict):
        raise ConfigError(f"{path} is not a run config of this project; start a new run instead.")
    for key, value in _walk(saved):
        if key.endswith("_target_") and value not in known_targets():
            raise ConfigError(
                f"{path} names {key}: {value}, which is not one of this project's classes; "
                "refusing to resume from it (run_config.yaml is data, not code)."
            )
        if isinstance(value, str) and "${" in value:
            raise ConfigError(f"{path}: {key} holds an interpolation ({value}); refusing it.")
    paths = saved["paths"]
    moves = [(str(paths.get("output_dir", "")), str(run_dir))]
    if paths.get("root_dir"):
        moves.append((str(paths["root_dir"]), str(PROJECT_ROOT)))
    moves = [(old, new) for old, new in moves if old and old != new]
    return OmegaConf.create(_relocate(saved, moves)), moves


def relocate_checkpoint(path: Path, moves: list[tuple[str, str]]) -> None:
    """The paths a checkpoint's callbacks remember (best checkpoints, their folder), re-anchored
    to where the run folder is now, so that a moved run keeps managing its own files."""
    if not moves:
        return
    import torch

    from mnist_lightning.atomic import write_atomically

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    remembered = checkpoint.get("callbacks", {})
    values = (v for _, v in _walk(remembered) if isinstance(v, str))
    if all(_moved(text, moves) == text for text in (*values, *map(str, _keys(remembered)))):
        return
    checkpoint["callbacks"] = _relocate(remembered, moves)
    write_atomically(path, lambda temporary: torch.save(checkpoint, temporary))


def _keys(node: Any):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _keys(v)
    elif isinstance(node, list):
        for v in node:
            yield from _keys(v)


def save_run_config(cfg: DictConfig, run_dir: Path, choices: dict[str, str], overrides: list[str]):
    from mnist_lightning.atomic import write_text_atomically

    saved = OmegaConf.to_container(cfg, resolve=True)
    saved["choices"] = choices
    saved["overrides"] = overrides
    write_text_atomically(run_dir / RUN_CONFIG, OmegaConf.to_yaml(saved))


def task_overrides() -> list[str]:
    """The overrides the command was given (not Hydra's own), or [] outside @hydra.main."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def refuse_overrides_on_resume(overrides: list[str], run_dir: Path) -> None:
    ignored = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in RESUME_KEYS]
    if ignored:
        raise ConfigError(
            f"resume continues {run_dir} with its own saved config ({RUN_CONFIG}); these overrides "
            f"would be ignored: {' '.join(ignored)}. Drop them, or start a new run with them."
        )


def checkpoint_to_resume(cfg: DictConfig) -> Path | None:
    """`resume=<run folder>` or `ckpt_path=<file>`: the checkpoint to continue from."""
    if cfg.get("ckpt_path"):
        checkpoint = Path(cfg.ckpt_path).expanduser()
        if not checkpoint.is_file():
            raise UserError(f"ckpt_path={checkpoint}: no such checkpoint file")
        return checkpoint
    if not cfg.get("resume"):
        return None
    run = Path(cfg.resume).expanduser()
    if not (run / RUN_CONFIG).is_file():
        raise UserError(f"resume={run}: not a run folder of this project (no {RUN_CONFIG})")
    checkpoint = run / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise UserError(
            f"resume={run}: it has no checkpoints/last.ckpt; the run stopped before its first epoch "
            "ended. Start it again instead."
        )
    return checkpoint


def finished_metrics(run_dir: Path) -> dict | None:
    """The results of a run that already finished in this folder, or None."""
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def forget_logged_after(cfg: DictConfig, run_dir: Path, step: int) -> None:
    """Before a run continues from `step`: what the killed attempt logged after it goes, so the
    logs read as those of an uninterrupted run. TensorBoard hides it (`purge_step`); the CSV
    log loses those rows."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for node in logger_configs(cfg, TensorBoardLogger):
        node.purge_step = step
    csv_log = run_dir / "metrics.csv"
    if csv_log.is_file():
        import csv
        import io

        from mnist_lightning.atomic import write_text_atomically

        with csv_log.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if not row.get("step") or int(row["step"]) < step]
            fields = reader.fieldnames or []
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomically(csv_log, text.getvalue())
