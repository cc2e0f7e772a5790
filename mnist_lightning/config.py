"""Where the configs live, and the OmegaConf resolvers that `conf/` uses."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(PROJECT_ROOT / "conf")


def _progress_refresh_rate(rate: int = 20) -> int:
    # A progress bar redrawn into a log file or CI output floods it; show one only on a terminal.
    return rate if sys.stdout.isatty() else 0


def _run_dir(resume, ckpt_path, new_dir: str) -> str:
    """A resumed run continues in its own folder; anything else gets a new one."""
    if resume:
        return str(Path(str(resume)).expanduser().resolve())
    if ckpt_path:
        checkpoint = Path(str(ckpt_path)).expanduser().resolve()
        return str(
            checkpoint.parent.parent
            if checkpoint.parent.name == "checkpoints"
            else checkpoint.parent
        )
    return new_dir


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("progress_refresh_rate", _progress_refresh_rate, replace=True)
    OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)


register_resolvers()
