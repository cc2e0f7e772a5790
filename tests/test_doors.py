"""Each door, fuzzed: generated hostile input can only end in one line (a UserError) or a 4xx,
nothing outside the folder changes, and nothing read back replaces a part of the config.

Example counts (README, "What is trusted") are kept small enough for `make test`'s budget."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from mnist_lightning.errors import UserError
from mnist_lightning.folders import (
    DamagedFile,
    FolderLock,
    read_json,
    read_own,
    read_yaml,
)
from mnist_lightning.record import check_resume
from mnist_lightning.training.resume import whole_rows
from mnist_lightning.training.run_folder import RunFolder
from tests.conftest import ROOT, compose, gone_pid

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def one_line(error: BaseException) -> bool:
    return bool(str(error)) and "\n" not in str(error)


@pytest.fixture
def run_folder(trained_run, tmp_path) -> Path:
    """A copy of a finished run's folder, without its results (as a killed run leaves it)."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    (copy / "metrics.json").unlink()
    return copy


def fresh_copy(run_folder: Path) -> Path:
    """A copy of `run_folder` in a new temporary folder beside it (one per generated example)."""
    copy = Path(tempfile.mkdtemp(dir=run_folder.parent)) / "run"
    shutil.copytree(run_folder, copy, ignore=shutil.ignore_patterns("epoch=*.ckpt", "*.png"))
    return copy


def outside_state(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- run and sweep folders ----------------------------------------------------------------------

LINK_KINDS = ("symlink to a file", "symlink to a folder", "hard link", "dangling symlink")


def in_place_writes(folder: Path) -> None:
    """What a command writes in place into a folder it holds (Hydra's log, hparams.yaml): every
    regular file reached without following a folder link, checkpoints aside (replaced by rename)."""
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if path.is_file() and path.suffix != ".ckpt":
                with path.open("a") as f:
                    f.write("written in place\n")


@settings(FUZZ, max_examples=20)
@given(
    where=st.lists(st.sampled_from([".hydra", "checkpoints", "deep", "x"]), max_size=3),
    name=st.sampled_from(
        [".lock", "train.log", "hparams.yaml", "config.yaml", "last.ckpt", "metrics.csv", "new"]
    ),
    kind=st.sampled_from(LINK_KINDS),
)
def test_links_in_a_run_folder_are_taken_and_never_written_through(
    run_folder, tmp_path, where, name, kind
):
    """Your own folder may hold links (a scratch disk, a snapshot copy): the resume is taken,
    and once a command holds the folder, writing its files in place changes nothing outside."""
    folder = fresh_copy(run_folder)
    outside = Path(tempfile.mkdtemp(dir=tmp_path))
    (outside / "precious.txt").write_text("years of work")
    place = folder.joinpath(*where, name)
    place.parent.mkdir(parents=True, exist_ok=True)
    if place.is_dir():
        shutil.rmtree(place)
    place.unlink(missing_ok=True)
    if kind == "symlink to a file":
        place.symlink_to(outside / "precious.txt")
    elif kind == "symlink to a folder":
        place.symlink_to(outside)
    elif kind == "hard link":
        os.link(outside / "precious.txt", place)
    else:
        place.symlink_to(outside / "nothing")
    before = outside_state(outside)
    check_resume(folder, [f"resume={folder}"])
    with FolderLock(folder):
        in_place_writes(folder)
    assert outside_state(outside) == before and not (outside / "nothing").exists()


def refused_command(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MNIST_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "mnist_lightning.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_resume_refused_after_hydra_started_keeps_hydras_record(run_folder, fixture_data_dir):
    """A hand-edited record refused inside the train command, after Hydra set up the run: Hydra's
    own record of the command (.hydra/) is not rewritten (`report` credits a job with its
    overrides), and every file of the run but its log is as it was."""
    (run_folder / ".hydra").mkdir(exist_ok=True)
    (run_folder / ".hydra" / "overrides.yaml").write_text("- optimizer=adam\n")
    record = yaml.safe_load((run_folder / "run_config.yaml").read_text())
    record["config"]["data"]["batch_size"] = 0  # a hand edit
    (run_folder / "run_config.yaml").write_text(yaml.safe_dump(record))
    files = {p: p.read_bytes() for p in run_folder.rglob("*") if p.is_file()}
    result = refused_command(f"resume={run_folder}", data_dir=fixture_data_dir)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert "data.batch_size=0: must be a whole number between 1 and 1,000,000" in last
    after = {p: p.read_bytes() for p in run_folder.rglob("*") if p.is_file()}
    assert {p: b for p, b in after.items() if p.name != "train.log"} == files


@pytest.mark.parametrize("case", ["an override", "another folder"])
def test_hydras_callback_refuses_before_anything_is_written(case, run_folder, tmp_path, capsys):
    """LockRunFolder runs before Hydra writes its record and its log into the folder."""
    from omegaconf import OmegaConf

    from mnist_lightning.hydra_callbacks import LockRunFolder

    victim = tmp_path / "precious.txt"
    victim.write_text("years of work")
    overrides, run_dir = [f"resume={run_folder}"], run_folder
    if case == "an override":
        overrides.append("optimizer.lr=0.5")
    else:
        run_dir = tmp_path / "elsewhere"
    config = OmegaConf.create(
        {
            "resume": str(run_folder),
            "ckpt_path": None,
            "hydra": {"run": {"dir": str(run_dir)}, "overrides": {"task": overrides}},
        }
    )
    files = {p: p.read_bytes() for p in run_folder.rglob("*") if p.is_file() and not p.is_symlink()}
    with pytest.raises(SystemExit) as stop:
        LockRunFolder().on_run_start(config)
    assert stop.value.code == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert files == {p: p.read_bytes() for p in files} and victim.read_text() == "years of work"
    assert not (tmp_path / "elsewhere").exists() and not (run_folder / ".lock").exists()


def test_a_resume_elsewhere_is_refused(run_folder, tmp_path):
    """The checks LockRunFolder makes before Hydra writes (the Hydra path itself: above)."""
    from mnist_lightning.errors import ConfigError

    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(
        ConfigError, match="continues the run in its own folder; drop hydra.run.dir"
    ):
        check_resume(run_folder, [f"resume={run_folder}"], elsewhere)


# --- the record of a run ---------------------------------------------------------------------

RECORD_EDITS = st.sampled_from(
    ["format", "overrides", "choices", "config", "config.data", "config.trainer.max_epochs"]
    + ["config.data.batch_size", "config.optimizer", "config.optimizer.name", "config.x"]
)


@settings(FUZZ, max_examples=15)
@given(where=RECORD_EDITS, value=st.none() | st.integers() | st.text(max_size=8) | st.just([]))
def test_a_hand_edited_record_resumes_or_is_one_line(run_folder, where, value):
    """run_config.yaml is yours to edit: any value anywhere is taken as the config it is, or
    refused in one line before anything is written."""
    folder = fresh_copy(run_folder)
    record = yaml.safe_load((folder / "run_config.yaml").read_text())
    *parents, key = where.split(".")
    node = record
    for part in parents:
        node = node[part]
    node[key] = value
    (folder / "run_config.yaml").write_text(yaml.safe_dump(record))
    before = outside_state(folder)
    try:
        settings, _ = RunFolder(folder).start_or_continue(compose([f"resume={folder}"], folder))
    except UserError as error:
        assert one_line(error)
        assert outside_state(folder) == before
        return
    config = OmegaConf.create(settings.config())
    assert OmegaConf.select(config, where.removeprefix("config.")) == value or where in (
        "overrides",
        "choices",
    )


# --- files read back --------------------------------------------------------------------------

HOSTILE_TEXT = [
    b"a: &a [1]\nb: &b [*a, *a]\nc: [*b, *b]\n",  # aliases
    b"[" * 20_000,  # nesting
    b"x: " + b"9" * 5_000,  # a number too long to read
    b"\xff\xfe not utf-8",
    b"step,val/acc\n1,0.5\n2,0.",  # a CSV row cut short by a kill
    b"!!python/object/apply:os.system ['true']",
]


@settings(FUZZ, max_examples=150)
@given(content=st.binary(max_size=512) | st.sampled_from(HOSTILE_TEXT))
def test_a_file_read_back_is_data_or_one_line(tmp_path, content):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "file"
    path.write_bytes(content)
    for read in (read_yaml, read_json, lambda path: read_own(path, whole_rows)):
        try:
            read(path)
        except DamagedFile as error:
            assert one_line(error) and str(path) in str(error) and "edited by hand" in str(error)


def test_a_csv_log_cut_by_a_kill_keeps_its_whole_rows_and_a_link_is_read_as_its_file(tmp_path):
    cut = tmp_path / "metrics.csv"
    cut.write_text("step,val/acc\n1,0.5\n2,0.")
    link = tmp_path / "linked.csv"
    link.symlink_to(cut)
    assert read_own(link, whole_rows) == [{"step": "1", "val/acc": "0.5"}]


# --- checkpoints --------------------------------------------------------------------------------

CHECKPOINT_PATHS = st.lists(
    st.sampled_from(
        ["state_dict", "hyper_parameters", "datamodule_hyper_parameters", "callbacks"]
        + ["optimizer_states", "lr_schedulers", "loops", "epoch", "global_step", "net", "name"]
        + ["optimizer", "lr", "activation", "net.hidden1.weight", "augment", "batch_size", "x"]
        + ["state", "param_groups", "0", "exp_avg", "_target_"]
    ),
    min_size=1,
    max_size=4,
)
TENSORS = st.builds(
    lambda shape, kind: torch.zeros(shape, dtype=kind),
    st.lists(st.integers(0, 4), max_size=3),
    st.sampled_from([torch.float32, torch.int64, torch.bool, torch.float16]),
)
SETTINGS_KEYS = st.sampled_from(
    ["trainer", "callbacks", "model", "data", "optimizer", "logger", "plugins", "net", "x"]
    + ["last_checkpoint", "model_checkpoint", "max_epochs", "dirpath", "_target_", "seed"]
)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.sampled_from(["relu", "/etc/passwd", "${oc.env:HOME}", "../x", "local:///tmp", ""])
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(SETTINGS_KEYS, inner, max_size=3)
        | st.just({"_target_": "os.makedirs", "name": "/tmp/evil"})
    ),
    max_leaves=6,
)
CHECKPOINT_VALUES = VALUES | TENSORS | st.just("__delete__")


def mutated(checkpoint: dict, path: list[str], value) -> dict:
    """`checkpoint` with `value` at `path` (a list's index by its number; `__delete__` removes)."""
    node = checkpoint
    for key in path[:-1]:
        numbered = isinstance(node, list) or (isinstance(node, dict) and key not in node)
        key = int(key) if numbered and key.isdigit() else key  # (optimizer states: by number)
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return checkpoint
        if not isinstance(node, dict | list):
            return checkpoint
    key = path[-1]
    if isinstance(node, dict) and key.isdigit() and int(key) in node:
        key = int(key)
    if isinstance(node, list):
        if not (key.isdigit() and int(key) < len(node)):
            return checkpoint
        key = int(key)
    if value == "__delete__":
        if isinstance(node, dict):
            node.pop(key, None)
        return checkpoint
    node[key] = value
    return checkpoint


@pytest.fixture
def checkpoint_state(trained_run) -> dict:
    from mnist_lightning.doors.checkpoints import read_checkpoint
    from mnist_lightning.folders import resolve_checkpoint

    return read_checkpoint(resolve_checkpoint(trained_run))


@settings(FUZZ, max_examples=40)
@given(path=CHECKPOINT_PATHS, value=CHECKPOINT_VALUES)
def test_a_mutated_checkpoint_is_a_model_or_one_line(checkpoint_state, tmp_path, path, value):
    import copy

    from mnist_lightning.doors.checkpoints import load_trained
    from mnist_lightning.errors import CheckpointError

    state = mutated(copy.deepcopy(checkpoint_state), path, value)
    file = Path(tempfile.mkdtemp(dir=tmp_path)) / "crafted.ckpt"
    torch.save(state, file)
    try:
        trained = load_trained(file)
    except CheckpointError as error:
        assert one_line(error)
        return
    with torch.no_grad():
        assert trained.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("sparse", "a torch.sparse_coo tensor on cpu, not dense with its data"),
        ("sparse_csr", "a torch.sparse_csr tensor on cpu, not dense with its data"),
        ("meta", "a torch.strided tensor on meta, not dense with its data"),
        ("nan", "its weight net.hidden1.weight is not finite (NaN or infinite): the run diverged"),
    ],
)
def test_a_checkpoints_tensors_are_dense_and_its_weights_finite(
    checkpoint_state, tmp_path, kind, reason
):
    """Tensors that torch.load takes but the model cannot (sparse, without data) failed only as
    they were copied in, in a traceback; weights of a diverged run answered NaN."""
    import copy

    from mnist_lightning.doors.checkpoints import load_trained
    from mnist_lightning.errors import CheckpointError

    state = copy.deepcopy(checkpoint_state)
    weight = state["state_dict"]["net.hidden1.weight"]
    state["state_dict"]["net.hidden1.weight"] = {
        "sparse": weight.to_sparse,
        "sparse_csr": weight.to_sparse_csr,
        "meta": lambda: torch.empty_like(weight, device="meta"),
        "nan": lambda: torch.full_like(weight, float("nan")),
    }[kind]()
    torch.save(state, tmp_path / "crafted.ckpt")
    with pytest.raises(CheckpointError) as error:
        load_trained(tmp_path / "crafted.ckpt")
    assert one_line(error.value) and reason in str(error.value)


@pytest.mark.parametrize("shape", ["nested 600 deep", "one list shared 40 times over", "a cycle"])
def test_a_checkpoint_nested_without_bound_is_one_line(checkpoint_state, tmp_path, shape):
    """A pickle can nest deeper than Python's stack, share one list at every level (2**40
    values from a few bytes) or hold itself: refused before anything walks it."""
    import copy

    from mnist_lightning.doors.checkpoints import load_trained
    from mnist_lightning.errors import CheckpointError

    value: list = [0]
    if shape == "a cycle":
        value.append(value)
    for _ in range(600 if shape.startswith("nested") else 40 if shape.startswith("one") else 0):
        value = [value] if shape.startswith("nested") else [value, value]
    state = copy.deepcopy(checkpoint_state)
    state["hyper_parameters"]["net"] = value
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # for torch.save to write it
    try:
        torch.save(state, tmp_path / "crafted.ckpt")
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError) as error:
        load_trained(tmp_path / "crafted.ckpt")
    assert one_line(error.value)
    assert "nested more than 32 levels deep" in str(error.value) or "1,000,000 values" in str(
        error.value
    )


@pytest.mark.parametrize("classes", ["network alone", "LightningModule"])
def test_a_checkpoint_describing_a_huge_network_is_refused_before_it_is_built(
    checkpoint_state, tmp_path, classes
):
    """A few bytes of settings can describe a network of GB (here 0.45 G parameters, 1.8 GB;
    with Maxout of 16 pieces 29 GB): the weights' shapes refuse it before any of it is
    allocated, for predict, export and serve (the network alone) and evaluate and resume."""
    import copy

    state = copy.deepcopy(checkpoint_state)
    state["hyper_parameters"].update(net={"name": "cnn", "channels": [4096] * 3}, activation="relu")
    torch.save(state, tmp_path / "huge.ckpt")
    script = (
        "import resource, sys\n"
        "from mnist_lightning.doors.checkpoints import load_trained\n"
        "from mnist_lightning.errors import CheckpointError\n"
        "classes = ()\n"
        "if sys.argv[2] == 'LightningModule':\n"
        "    from mnist_lightning.data.datamodule import MNISTDataModule\n"
        "    from mnist_lightning.models.classifier import MNISTClassifier\n"
        "    classes = ((MNISTClassifier, MNISTDataModule),)\n"
        "try:\n"
        "    load_trained(sys.argv[1], None, *classes)\n"
        "except CheckpointError as error:\n"
        "    print(error)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "huge.ckpt"), classes],
        capture_output=True,
        text=True,
        timeout=120,
    )
    refusal, peak_mb = done.stdout.splitlines()
    assert "has no net.conv1.0.weight" in refusal and one_line(refusal)
    assert int(peak_mb) < 1500  # torch and Lightning take 0.5-0.8 GB; the network would take 1.8


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_damaged_checkpoint_bytes_are_one_line(checkpoint_state, tmp_path, data):
    import io
    import zipfile

    from mnist_lightning.doors.checkpoints import read_checkpoint
    from mnist_lightning.errors import CheckpointError

    buffer = io.BytesIO()
    torch.save(checkpoint_state, buffer)
    raw = bytearray(buffer.getvalue())
    how = data.draw(st.sampled_from(["truncate", "flip", "deflate"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    else:  # the same entries compressed: a small file that would inflate
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(bytes(raw))) as src, zipfile.ZipFile(out, "w") as dst:
            for entry in src.infolist():
                dst.writestr(entry.filename, src.read(entry), zipfile.ZIP_DEFLATED)
        raw = bytearray(out.getvalue())
    file = Path(tempfile.mkdtemp(dir=tmp_path)) / "damaged.ckpt"
    file.write_bytes(bytes(raw))
    try:
        read_checkpoint(file)
    except CheckpointError as error:
        assert one_line(error)
    else:
        assert how == "flip"  # a byte of a weight changed: still a checkpoint


RESUME_PATHS = st.lists(
    st.sampled_from(
        ["loops", "fit_loop", "state_dict", "epoch_progress", "total", "callbacks"]
        + ["epoch", "global_step", "lr_schedulers", "x"]
    ),
    min_size=1,
    max_size=5,
)


@settings(FUZZ, max_examples=6)
@given(path=RESUME_PATHS, value=CHECKPOINT_VALUES)
def test_a_resume_from_a_mutated_checkpoint_continues_or_is_one_line(
    run_folder, fixture_data_dir, path, value
):
    """The checkpoint a resume continues from: whatever is wrong in it, one line."""
    import copy

    from mnist_lightning.train import train

    folder = fresh_copy(run_folder)
    record = yaml.safe_load((folder / "run_config.yaml").read_text())
    record["config"]["trainer"]["max_epochs"] = 7  # one more epoch than the run had
    (folder / "run_config.yaml").write_text(yaml.safe_dump(record))
    last = folder / "checkpoints" / "last.ckpt"
    torch.save(mutated(copy.deepcopy(torch.load(last, weights_only=True)), path, value), last)
    try:
        metrics = train(compose([f"resume={folder}", f"data.data_dir={fixture_data_dir}"], folder))
    except UserError as error:
        assert one_line(error)
        return
    assert metrics["epochs"] == 7


DAMAGED_STATES = {
    "a global step that is text": (["global_step"], "12"),
    "callbacks as a list": (["callbacks"], []),
    "an extra weight": (["state_dict", "net.extra"], torch.zeros(1)),
    "a loop's progress as text": (["loops", "fit_loop", "epoch_progress"], "x"),
}


@pytest.mark.parametrize("case", list(DAMAGED_STATES))
def test_a_resume_from_a_damaged_checkpoint_is_one_line(case, run_folder, fixture_data_dir):
    from mnist_lightning.errors import CheckpointError
    from mnist_lightning.train import train

    path, value = DAMAGED_STATES[case]
    last = run_folder / "checkpoints" / "last.ckpt"
    torch.save(mutated(torch.load(last, weights_only=True), path, value), last)
    record = yaml.safe_load((run_folder / "run_config.yaml").read_text())
    record["config"]["trainer"]["max_epochs"] = 7
    (run_folder / "run_config.yaml").write_text(yaml.safe_dump(record))
    with pytest.raises(CheckpointError) as error:
        train(compose([f"resume={run_folder}", f"data.data_dir={fixture_data_dir}"], run_folder))
    assert one_line(error.value) and str(last) in str(error.value)


# --- a stored Optuna study -------------------------------------------------------------------


def study_of_this_search(path: Path):
    """A study of this project's search in `path`, with two finished trials and one that a
    killed worker of this machine left running."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from mnist_lightning.search.study import WORKER

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name="mnist", storage=f"sqlite:///{path}", direction="maximize"
    )
    space = {
        "model.activation": CategoricalDistribution(["relu", "tanh"]),
        "optimizer.lr": FloatDistribution(1e-4, 0.5, log=True),
    }
    for value, activation in ((0.9, "relu"), (0.8, "tanh")):
        study.add_trial(
            optuna.trial.create_trial(
                params={"model.activation": activation, "optimizer.lr": 0.01},
                distributions=space,
                value=value,
            )
        )
    trial = study.ask(space)  # left RUNNING by a process that is gone
    trial.set_user_attr(WORKER, {"host": socket.gethostname(), "pid": gone_pid()})
    return study


STUDY_EDITS = st.sampled_from(
    [
        ("trial_user_attributes", "value_json"),
        ("trial_params", "distribution_json"),
        ("trial_params", "param_value"),
        ("trials", "state"),
        ("trial_values", "value"),
        ("studies", "study_name"),
        ("study_directions", "direction"),
    ]
)


@settings(FUZZ, max_examples=8)
@given(
    edit=STUDY_EDITS,
    value=st.one_of(st.text(max_size=30), st.integers(-(2**63), 2**63 - 1), st.none()),
)
def test_an_edited_study_is_resumed_or_one_line(tmp_path, capsys, edit, value):
    import sqlite3

    from mnist_lightning.search.study import open_search, progress

    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "optuna.db"
    study_of_this_search(path)
    table, column = edit
    with sqlite3.connect(path) as db:
        try:
            db.execute(f"UPDATE {table} SET {column} = ?", (value,))
        except sqlite3.Error:
            return  # the database itself refuses the value
    capsys.readouterr()
    try:
        study = open_search(f"sqlite:///{path}", "mnist", "maximize", None, 5)
        assert " of 5 trials finished" in progress(study, 5)
    except SystemExit as stop:
        assert stop.code == 1
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: sqlite:///")


def test_a_resumed_study_fails_the_trial_a_killed_worker_left_and_runs_it_again(tmp_path):
    from optuna.trial import TrialState

    from mnist_lightning.search.study import open_search, progress

    study_of_this_search(tmp_path / "optuna.db")
    study = open_search(f"sqlite:///{tmp_path / 'optuna.db'}", "mnist", "maximize", None, 5)
    assert [t.state for t in study.trials][-1] == TrialState.FAIL
    assert progress(study, 5) == "2 of 5 trials finished, 3 to go"


def test_report_reads_any_job_folder_as_data(tmp_path):
    """A layer's name that is matplotlib's mathematics, a metrics.json nested thousands deep, an
    overrides.yaml of aliases: each job is a row, and the summary is written."""
    from mnist_lightning.report import write_summary

    sweep = tmp_path / "sweep"
    jobs = {
        "0": (
            ["model.activation=$\\frac{$"],
            '{"val/acc_best": 0.9, "test/acc": 0.9, '
            '"gradient_norms": {"step": [1, 2], "$\\frac{$.weight": [0.1, 0.2]}}',
        ),
        "1": (["model.activation=relu"], "[" * 5000 + "]" * 5000),
        "2": ("a: &a [1]\nb: [*a, *a]\n", '{"val/acc_best": 0.8}'),
    }
    for name, (overrides, metrics) in jobs.items():
        (sweep / name / ".hydra").mkdir(parents=True)
        text = overrides if isinstance(overrides, str) else yaml.safe_dump(overrides)
        (sweep / name / ".hydra" / "overrides.yaml").write_text(text)
        (sweep / name / "metrics.json").write_text(metrics)
    rows = {row["job"]: row["status"] for row in write_summary(sweep)}
    assert rows["0"] == "ok"
    assert rows["1"].startswith("unreadable: metrics.json is damaged or was edited by hand")
    assert rows["2"].startswith("unreadable: .hydra/overrides.yaml")
    assert (sweep / "summary.png").stat().st_size > 0 and (sweep / "gradient_flow.png").exists()


def write_sweep(sweep: Path, jobs: list[tuple[list[str], str]]) -> None:
    for name, (overrides, metrics) in enumerate(jobs):
        (sweep / str(name) / ".hydra").mkdir(parents=True)
        (sweep / str(name) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (sweep / str(name) / "metrics.json").write_text(metrics)


def test_report_draws_a_bounded_part_of_a_large_sweep(tmp_path):
    """A sweep folder's few MB could ask for hundreds of panels (an image over matplotlib's
    65,536 pixels a side), thousands of layers or a legend of megabytes: the figures draw the
    best (or first) 20 jobs, 12 layers each, labels cut at 60 characters; every job is a row."""
    import json

    from PIL import Image

    from mnist_lightning.report import write_summary

    history = {"val_check/val/acc": [0.5, 0.9], "val_check/images": [1, 2]}
    history["val_check/seconds"] = [1, 2]
    metrics = {"val/acc_best": 0.9, "test/acc": 0.9, "history": history}
    many_layers = {"step": [1, 2]} | {f"layer{i}.weight": [0.1, 0.2] for i in range(3000)}
    jobs = [
        (
            [f"model.activation=a{i}", "x=" + "y" * 5000],  # a label of 5,000 characters
            json.dumps(
                metrics | {"gradient_norms": many_layers if i == 0 else {"step": [1], "w": [1]}}
            ),
        )
        for i in range(240)  # 48 rows of panels: 13,440 pixels high
    ]
    sweep = tmp_path / "sweep"
    write_sweep(sweep, jobs)
    rows = write_summary(sweep)
    assert len(rows) == 240 and all(row["status"] == "ok" for row in rows)
    for figure in ("summary.png", "gradient_flow.png"):
        width, height = Image.open(sweep / figure).size
        assert width <= 2000 and height <= 1200, (figure, width, height)


def test_a_figure_its_values_break_is_one_line_and_the_tables_stand(tmp_path, caplog, monkeypatch):
    import mnist_lightning.report as report

    def broken(rows):
        raise RuntimeError("FT_Render_Glyph failed with error 0x62: raster overflow\nmore")

    monkeypatch.setattr(report, "summary_figure", broken)
    write_sweep(tmp_path, [(["optimizer=adam"], '{"val/acc_best": 0.9, "test/acc": 0.9}')])
    with caplog.at_level("WARNING", logger="mnist_lightning.report"):
        assert report.write_summary(tmp_path)[0]["status"] == "ok"
    assert "summary.png not drawn (RuntimeError: FT_Render_Glyph failed" in caplog.text
    assert "more" not in caplog.text and not (tmp_path / "summary.png").exists()
    assert "optimizer=adam" in (tmp_path / "summary.md").read_text()


@settings(FUZZ, max_examples=25)
@given(
    jobs=st.lists(
        st.tuples(
            st.lists(
                st.sampled_from(["model.activation=relu", "optimizer=adam", "x=$\\frac{$"])
            ).map(lambda overrides: [*overrides, "+note=\x1b]0;title\x07\x1b[2J"]),  # escapes
            st.fixed_dictionaries(
                {},
                optional={
                    key: st.one_of(
                        st.none(),
                        st.booleans(),
                        st.integers(-(2**70), 2**70),
                        st.floats(),
                        st.text(max_size=3),
                        st.dictionaries(
                            st.sampled_from(["val_check/val/acc", "val_check/images", "step", "w"]),
                            st.lists(st.one_of(st.floats(), st.integers(), st.none()), max_size=5),
                            max_size=4,
                        ),
                    )
                    for key in ("val/acc_best", "test/acc", "fit_seconds", "epochs", "history")
                    + ("gradient_norms",)
                },
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_metrics_of_any_job_are_a_row(tmp_path, caplog, jobs):
    """Any values (NaN and infinities too, which JSON readers accept) at the keys the report
    reads: each job is a row, and the summary and its figures are written; the table printed
    holds no terminal escape read from a job's overrides."""
    import json

    from mnist_lightning.report import write_summary

    sweep = Path(tempfile.mkdtemp(dir=tmp_path))
    write_sweep(sweep, [(overrides, json.dumps(metrics)) for overrides, metrics in jobs])
    with caplog.at_level("INFO", logger="mnist_lightning.report"):
        rows = write_summary(sweep)
    assert "\x1b" not in caplog.text and "\\x1b" in caplog.text  # the table, printed
    assert sorted(row["job"] for row in rows) == [str(i) for i in range(len(jobs))]
    assert all(row["status"] == "ok" or row["status"].startswith("unreadable: ") for row in rows)
    assert (sweep / "summary.png").stat().st_size > 0


def test_predict_reads_a_folder_whose_names_are_not_utf8(trained_run, tmp_path):
    from mnist_lightning.predict import predict
    from tests.test_tools import tool_config

    folder = tmp_path / "digits"
    folder.mkdir()
    digit = torch.zeros(28, 28, dtype=torch.uint8)
    digit[6:22, 12:16] = 255
    from PIL import Image

    Image.fromarray(digit.numpy()).save(os.fsdecode(bytes(folder) + b"/seven\xff.png"))
    output = tmp_path / "out.csv"
    cfg = tool_config(
        "predict",
        [f"ckpt_path={trained_run}", f"inputs={folder}", f"output={output}"],
        tmp_path / "run",
    )
    results = predict(cfg)
    assert [r["file"] for r in results] == [f"{folder}/seven\\xff.png"]
    assert "seven\\xff.png" in output.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "out.csv"]  # nothing left


# --- the command line -----------------------------------------------------------------------

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["relu", "adam", "val/acc", "/etc", "???"]),
    st.lists(st.integers(-5, 5) | st.floats(-2, 2) | st.text(max_size=3), max_size=4),
    st.dictionaries(
        st.sampled_from(["name", "lr", "x", "_target_"]), st.integers(0, 3), max_size=2
    ),
)


def setting_paths(cfg, prefix: str = "") -> list[str]:
    """Every key of a composed config, at every depth (Hydra's own node and places aside)."""
    from omegaconf import DictConfig

    found = []
    for key in cfg:
        if key in ("hydra", "paths") or str(key).startswith("_"):
            continue
        path = f"{prefix}{key}"
        found.append(path)
        node = cfg._get_node(key)._value() if False else None  # (resolved below)
        del node
        try:
            child = cfg.get(key)
        except Exception:  # noqa: BLE001 - an interpolation that needs Hydra
            continue
        if isinstance(child, DictConfig):
            found += setting_paths(child, f"{path}.")
    return found


class Composed(dict):
    """Each command's composed config and its keys (shown by name in a failing example)."""

    def __repr__(self) -> str:
        return f"<the composed configs of {', '.join(self)}>"


@pytest.fixture(scope="module")
def composed(tmp_path_factory) -> Composed:
    from tests.test_tools import tool_config

    folder = tmp_path_factory.mktemp("composed")
    configs = {"train": compose(["optimizer=adam", "scheduler=step"], folder)}
    for command in ("evaluate", "predict", "export", "serve"):
        given = ["ckpt_path=x", "inputs=y"] if command == "predict" else ["ckpt_path=x"]
        configs[command] = tool_config(command, given, folder)
    return Composed({name: (cfg, setting_paths(cfg)) for name, cfg in configs.items()})


@settings(FUZZ, max_examples=120)
@given(data=st.data(), value=ANY_VALUE)
def test_any_value_at_any_key_of_any_command_is_taken_or_one_line(composed, data, value):
    from omegaconf import OmegaConf, open_dict

    from mnist_lightning import settings as door
    from mnist_lightning.errors import ConfigError
    from mnist_lightning.training.check import check

    command = data.draw(st.sampled_from(sorted(composed)))
    cfg, paths = composed[command]
    cfg = cfg.copy()
    path = data.draw(st.sampled_from(paths))
    with open_dict(cfg):
        try:
            OmegaConf.update(cfg, path, value, force_add=True)
        except Exception:  # noqa: BLE001 - OmegaConf itself refuses it: Hydra's parser would too
            return
    options = {
        "evaluate": door.EvaluateOptions,
        "predict": door.PredictOptions,
        "export": door.ExportOptions,
        "serve": door.ServeOptions,
    }
    try:
        if command == "train":
            check(cfg)
        else:
            door.command_options(options[command], cfg)
    except ConfigError as error:
        assert all(line and line.split("=")[0].split(":")[0] for line in str(error).splitlines())
        assert len(str(error).splitlines()) <= 3  # one line per setting that is wrong


# --- images -------------------------------------------------------------------------------------


def image_bytes(kind: str) -> bytes:
    """A small valid image of `kind`, to mutate."""
    import io

    import numpy as np
    from PIL import Image

    digit = np.zeros((40, 30), np.uint8)
    digit[8:32, 12:18] = 255
    buffer = io.BytesIO()
    if kind == "png16":
        Image.fromarray(digit.astype(np.uint16) * 257).save(buffer, format="PNG")
    elif kind == "float tiff":
        Image.fromarray(digit.astype(np.float32) / 255, "F").save(buffer, format="TIFF")
    else:
        Image.fromarray(digit).convert("RGB").save(buffer, format=kind)
    return buffer.getvalue()


@settings(FUZZ, max_examples=60)
@given(
    kind=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "png16", "float tiff"]),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 2000),
)
def test_a_mutated_image_is_a_digit_or_one_line(kind, edits, cut):
    from mnist_lightning.doors.images import decode_image, image_to_digit
    from mnist_lightning.errors import ImageError

    data = bytearray(image_bytes(kind))
    for where, value in edits:
        if where < len(data):
            data[where] = value
    data = bytes(data[: max(1, len(data) - cut)] if cut < len(data) else data)
    try:
        image = decode_image(data, "upload", max_side=4096, max_decoded_bytes=16e6)
        digit = image_to_digit(image, "upload")  # as the gate and predict call it: with its name
    except ImageError as error:
        assert one_line(error) and str(error).startswith("upload")
        return
    assert digit.shape == (1, 28, 28) and digit.dtype == torch.uint8
