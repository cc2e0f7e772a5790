"""The one wrapper every command runs behind: train, evaluate, predict, export, serve, report.

- A user error (errors.UserError: a bad value, missing data, a bad checkpoint, a full disk, a
  folder that cannot be written) ends in one line, `error: <what is wrong and what to do>`, and
  exit code 1, never a traceback.
- A job of a multirun that fails leaves `failure.json` in its folder and returns no value, so the
  sweep goes on and its summary says why (Optuna records a failed trial); but a first job
  refused before any work for a setting that no job of the sweep varies stops the sweep, which
  would run every job into the same refusal.
- What every command's process shares: Lightning's messages through Hydra's logging minus its
  tips, imported objects frozen for the garbage collector, and background
  threads' write errors in one line (the main thread reports the same error when it next writes).
"""

from __future__ import annotations

import errno
import functools
import gc
import json
import logging
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.errors import ConfigError, UserError, one_line

log = logging.getLogger("mnist_lightning")

_NOISE = ("Tip:", "TPU available", "HPU available", "Skipping setting a default", "LOCAL_RANK")
FAILURE = "failure.json"

Task = TypeVar("Task", bound=Callable[..., Any])


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def user_message(error: BaseException) -> str | None:
    """What to tell the user about `error`, in one line; None when it is a bug (a traceback)."""
    if isinstance(error, UserError):  # one line per problem (a config's: one per setting)
        problems = str(error).split("\n") if isinstance(error, ConfigError) else [str(error)]
        return "\n".join(one_line(problem) for problem in problems)
    if isinstance(error, OSError) and (error.filename or error.errno == errno.ENOSPC):
        where = f": {error.filename}" if error.filename else ""
        return (
            f"{error.strerror or type(error).__name__}{where}; check that it exists and can be "
            "written (and that the disk has room), or choose another path"
        )
    return None


def command(task: Task) -> Task:
    """Run `task` as a command: see the module's docstring."""

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        quiet_library_logs()
        threading.excepthook = _background_write_errors
        # A log file that cannot be written (a full disk) does not print a traceback per line:
        # the console still shows every message, and the command's own error says what failed.
        logging.raiseExceptions = False
        try:
            with imported_objects_frozen():
                return task(*args, **kwargs)
        except Exception as error:
            message = user_message(error)
            if in_multirun():
                record_failure(error, message)
                log.error("job failed: %s", message or repr(error), exc_info=message is None)
                if every_job_would_fail(error):
                    log.error(
                        "error: the sweep stops: its first job was refused before any work for "
                        "what every job shares; mend it and run the sweep again"
                    )
                    sys.exit(1)
                return None
            if message is None:
                raise
            log.error("error: %s", message)
            sys.exit(1)

    return run  # type: ignore[return-value]


def swept_keys() -> set[str] | None:
    """The settings a sweep varies: its command line's sweeps (`a=1,2`, `glob(*)`) and its
    sweeper's own search space (Optuna's params); None when the command line cannot be read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        given = [a for a in sys.argv[1:] if not a.startswith("-")]
        parsed = OverridesParser.create().parse_overrides(given)
    except Exception:  # noqa: BLE001 - Hydra read it before; unread, the sweep goes on
        return None
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()}
    return keys | set(HydraConfig.get().sweeper.get("params") or {})


def every_job_would_fail(error: BaseException) -> bool:
    """Whether the sweep's first job was refused before any work (a ConfigError) for settings
    that the sweep does not vary, so that every other job would be refused the same way."""
    if not isinstance(error, ConfigError) or HydraConfig.get().job.num != 0:
        return False
    swept = swept_keys()
    if swept is None:
        return False
    named = {
        re.split(r"[=: ]", line.lstrip("+~"), maxsplit=1)[0] for line in str(error).split("\n")
    }
    return not any(
        n == k or n.startswith(f"{k}.") or k.startswith(f"{n}.") or n.startswith(f"{k}/")
        for n in named
        for k in swept
    )


def record_failure(error: BaseException, message: str | None) -> None:
    """`failure.json` in the job's folder: what the sweep summary shows for it."""
    folder = Path(HydraConfig.get().runtime.output_dir)
    details = {
        "error": type(error).__name__,
        "message": message or str(error),
        "traceback": "".join(traceback.format_exception(error)),
    }
    write_text_atomically(folder / FAILURE, json.dumps(details, indent=2) + "\n")


def _background_write_errors(args: threading.ExceptHookArgs) -> None:
    """A background writer (TensorBoard's event files) that cannot write: one line, no
    traceback; the command's own next write reports it."""
    if isinstance(args.exc_value, OSError):
        log.warning("%s could not write: %s", args.thread.name, user_message(args.exc_value))
        return
    threading.__excepthook__(args)


def _drop_noise(record: logging.LogRecord) -> bool:
    return not any(s in record.getMessage() for s in _NOISE)


def quiet_library_logs() -> None:
    """Route Lightning's messages through Hydra's logging (console + log file), minus its tips."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        if _drop_noise not in handler.filters:  # once, even when a sweep trains many jobs
            handler.addFilter(_drop_noise)
    # Library deprecation chatter that a user can do nothing about.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def freeze_imported_objects() -> None:
    """Torch and the rest leave ~500,000 objects that every full garbage collection walks (a
    pause of ~0.4 s, in the middle of an epoch or of answering) and the interpreter's exit too;
    they live as long as the process, so the collector is told to leave them alone."""
    gc.freeze()


@contextmanager
def imported_objects_frozen() -> Iterator[None]:
    """The freeze stays for the exit; in a sweep whose jobs share this process it ends with the
    job, so that the next job's collections can free this one's objects."""
    freeze_imported_objects()
    try:
        yield
    finally:
        if in_multirun():
            gc.unfreeze()
