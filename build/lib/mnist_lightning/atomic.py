"""Files written whole or not at all: a temporary file in the target's own folder, renamed into
place. A rename within one folder is atomic, so a kill or a full disk never leaves a
half-written file under a final name, whatever filesystem the system's temp folder is on. The
temporary file is created afresh (O_EXCL) and the rename replaces whatever held the name, a
link included: a write never follows a link out of its folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mnist_lightning.errors import OutputError


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(temporary_path)`, then move the result to `path`.

    Any OSError (a full disk, a folder that cannot be written) becomes one OutputError naming
    the folder; whatever fails, the temporary file is removed.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from the user's group
        os.close(fd)
        temporary = Path(name)
        write(temporary)
        with temporary.open("rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it the file
        os.replace(temporary, path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(
            f"cannot write {path.name} in {path.parent} ({reason}); free some space there or fix "
            "its permissions, or choose another output folder. Nothing was left half-written."
        ) from None
    finally:  # whatever failed (a write error, text that cannot be encoded), nothing is left
        if temporary is not None and temporary.exists():
            temporary.unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_atomically(path, lambda temporary: temporary.write_text(text))
