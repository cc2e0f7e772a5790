"""OmegaConf resolvers used by the configs in `conf/`; imported by every Hydra entry point."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(PROJECT_ROOT / "conf")


def _progress_refresh_rate(rate: int = 20) -> int:
    # A progress bar redrawn into a log file or CI output floods it; show one only on a terminal.
    return rate if sys.stdout.isatty() else 0


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("progress_refresh_rate", _progress_refresh_rate, replace=True)


register_resolvers()
