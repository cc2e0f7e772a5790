"""A run's record, run_config.yaml: the run's own config as composed (training/run_folder.py
writes it), what `resume=` continues with. Read here, import-light, because Hydra's launcher
process checks a resume (hydra_callbacks.py) before Hydra writes anything into the folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnist_lightning.config import RUN_CONFIG, override_key
from mnist_lightning.errors import ConfigError, UserError
from mnist_lightning.folders import DamagedFile, read_yaml

RECORD_FORMAT = 3  # run_config.yaml's (training/run_folder.py writes it)
# What may be given beside resume=: where the data and the trackers are, Hydra's own, and a new
# length (training longer: the run goes on to it from its last checkpoint, as Lightning's
# fit(ckpt_path=) does).
LENGTH_KEYS = ("trainer.max_epochs", "trainer.max_steps")
RESUME_KEYS = ("resume", "ckpt_path", "data.data_dir", "data.download", "data.mirrors")
RESUME_KEYS += LENGTH_KEYS
RESUME_PREFIXES = ("logger.", "paths.", "hydra.")
# Schedules spread over the run's length, which a longer run cannot continue: OneCycle stops at
# its last step, a cosine turns back up after T_max.
BOUND_TO_LENGTH = ("onecycle", "cosine")


def length_overrides(overrides: list[str]) -> list[str]:
    """The overrides that train a resumed run longer (trainer.max_epochs=, trainer.max_steps=)."""
    return [o for o in overrides if override_key(o) in LENGTH_KEYS]


def read_record(folder: Path) -> dict[str, Any]:
    """A run folder's run_config.yaml: its format, overrides, choices and config, or one line."""
    path = folder / RUN_CONFIG
    try:
        record = read_yaml(path)
    except DamagedFile as error:
        raise DamagedFile(f"{error}; mend the edit, or start a new run instead.") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise DamagedFile(
            f"{path} is not a run record of this version of the project; start a new run "
            "instead (the run's checkpoints still load in evaluate, predict, export and serve)."
        )
    kinds = {"overrides": list, "choices": dict, "config": dict}
    for key, kind in kinds.items():
        if not isinstance(record.get(key), kind):
            raise DamagedFile(f"{path}: {key} is damaged or was edited by hand; start a new run.")
    return record


def check_resume(folder: Path, overrides: list[str], output_dir: Path | None = None) -> dict:
    """Whether `resume=<folder>` with these overrides may continue the run there, before anything
    is written: no override that would change the run, the run's own folder as the output
    folder (hydra.run.dir, if given), and a readable record, which it returns. One line if not."""
    if output_dir is not None and output_dir.resolve() != folder.resolve():
        raise ConfigError(
            f"resume={folder} continues the run in its own folder; drop "
            f"hydra.run.dir={output_dir}, or start a new run there instead."
        )
    refused = [
        o
        for o in overrides
        if override_key(o) not in RESUME_KEYS and not override_key(o).startswith(RESUME_PREFIXES)
    ]
    if refused:
        raise ConfigError(
            f"resume continues {folder} with its own recorded config ({RUN_CONFIG}); "
            f"these overrides would change the run: {' '.join(refused)}. Drop them, or start "
            "a new run with them."
        )
    if not (folder / RUN_CONFIG).is_file():
        raise UserError(f"resume={folder}: not a run folder of this project (no {RUN_CONFIG})")
    record = read_record(folder)
    longer = length_overrides(overrides)
    scheduler = record["config"].get("scheduler") or {}
    if longer and isinstance(scheduler, dict) and scheduler.get("name") in BOUND_TO_LENGTH:
        raise ConfigError(
            f"{' '.join(longer)}: the run's scheduler={scheduler['name']} is spread over its "
            "length and cannot go on past it; train longer as a new run that starts from this "
            f"one's weights, with a schedule of its own (init_from={folder})."
        )
    return record
