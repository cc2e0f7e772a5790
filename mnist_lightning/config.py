"""Where the configs live (`conf/`), where outputs and data go, and the OmegaConf resolvers that
`conf/` uses."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import OmegaConf

from mnist_lightning import PACKAGE_DIR, project_root
from mnist_lightning.errors import UserError

# conf/ sits at the top of the checkout (an editable install reads it there, so an edit needs no
# reinstall); a wheel holds it inside the package (pyproject.toml's force-include).
CONFIG_DIR = str(next(p for p in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf") if p.is_dir()))
RUN_CONFIG = "run_config.yaml"  # a run's record: the file that makes a folder a run folder


def _on_terminal(value=True, otherwise=None):
    """`value` when the output is a terminal, else `otherwise`: a progress bar redrawn into a
    log file floods it, and one that is switched off still costs a callback call every step."""
    return value if sys.stdout.isatty() else otherwise


def run_dir(resume, ckpt_path, new_dir: str) -> str:
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


def _hydra_record(output_dir: str, subdir: str = ".hydra") -> str | None:
    """Hydra's record of the command (`.hydra/`), written only into a folder that holds no run
    yet: a resumed run, or a sweep's job run again, keeps the record of the command that
    started it, even when this command is refused."""
    return None if (Path(output_dir) / RUN_CONFIG).is_file() else subdir


def _run_name(output_dir: str) -> str:
    """A tracker's name for a run: the overrides of a sweep's job (`optimizer=adam,seed=1`), else
    the run folder's name."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        job = HydraConfig.get().job
        short = [o for o in HydraConfig.get().overrides.task if len(o) <= 60]
        return f"{job.num}: {' '.join(short)}"[:120]
    return Path(output_dir).name


def hydra_quoted(text: str) -> str:
    """`text` as a quoted value of a Hydra override that means exactly `text`, whatever it holds
    (a run folder's name with `( ) [ ] , = ' # ~ { }` or `${x}`). Hydra's grammar has no public
    function for it: quotes and `${` are escaped, and the backslashes before them doubled."""
    text = re.sub(r"(\\+)(?='|\$\{|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


def override_key(override: str) -> str:
    """The key or config group a command-line override sets: `a.b` of `+a.b=1`, `~a.b` or
    `++a.b=1`; `model/net` of `model/net=cnn`."""
    return override.partition("=")[0].lstrip("+~")


def group_targets(group: Mapping | None) -> list:
    """Every entry of a config group that names a `_target_` (callbacks, loggers)."""
    return [
        node for node in (group or {}).values() if isinstance(node, Mapping) and "_target_" in node
    ]


def group_configs(group: Mapping | None, cls: type) -> list:
    """The entries of a config group (`logger`, `callbacks`) that build a `cls` (or a
    subclass). A `_target_` that does not import is skipped here: the config check reports it."""
    found = []
    for node in group_targets(group):
        try:
            target = get_class(node["_target_"])
        except (ImportError, ValueError):
            continue
        if isinstance(target, type) and issubclass(target, cls):
            found.append(node)
    return found


def dataset_description(name: str) -> dict | None:
    """The whole description of a dataset that a checkpoint learnt (its files, their MD5s, its
    mirrors) by its name: `data/<name>.yaml` of conf/, or of a config folder the command adds
    (hydra.searchpath=[file://my_conf]). A checkpoint names its dataset, never where its files
    come from. None for MNIST (data/datasets.py). `name` is typed where the checkpoint is read
    (a lowercase identifier)."""
    if name == "mnist":
        return None
    folders = [Path(CONFIG_DIR)]
    if HydraConfig.initialized():
        sources = HydraConfig.get().runtime.config_sources
        folders += [Path(source.path) for source in sources if source.schema == "file"]
    for folder in folders:
        path = folder / "data" / f"{name}.yaml"
        if path.is_file() and (description := OmegaConf.load(path).get("dataset")):
            return OmegaConf.to_container(description, resolve=True)
    raise UserError(
        f"the checkpoint learnt the dataset {name}, which no data/{name}.yaml of the config "
        "folders describes; add its config file (to conf/data/, or give its folder with "
        "hydra.searchpath=[file://<folder>]), as for training it"
    )


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(project_root()), replace=True)
    OmegaConf.register_new_resolver("on_terminal", _on_terminal, replace=True)
    OmegaConf.register_new_resolver("run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("run_name", _run_name, replace=True)
    OmegaConf.register_new_resolver("hydra_record", _hydra_record, replace=True)


register_resolvers()
