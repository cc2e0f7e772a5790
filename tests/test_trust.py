"""Files read back are data: no checkpoint, run folder or sweep folder can run code, choose the
data, or make a command write or delete outside its folder. Each case is a hostile file."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from mnist_lightning.doors.checkpoints import load_trained, read_checkpoint
from mnist_lightning.errors import CheckpointError, ConfigError, OutputError, UserError
from mnist_lightning.evaluate import evaluate
from mnist_lightning.export import export_checkpoint
from mnist_lightning.folders import resolve_checkpoint
from mnist_lightning.predict import predict
from mnist_lightning.serve.server import build_server
from mnist_lightning.settings import ServeOptions, command_options
from mnist_lightning.train import train
from tests.conftest import FAST, compose, run_module, write_mnist
from tests.test_runs import held_by_another_process, unfinished
from tests.test_tools import tool_config


def os_makedirs(marker: Path) -> dict:
    """A Hydra config that would create `marker` if anything instantiated it."""
    return {"_target_": "os.makedirs", "name": str(marker)}


def crafted(trained_run: Path, tmp_path: Path, change) -> Path:
    """A copy of the run's tested checkpoint with `change(checkpoint)` applied."""
    checkpoint = read_checkpoint(resolve_checkpoint(trained_run))
    change(checkpoint)
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path


def model_hp(checkpoint: dict) -> dict:
    return checkpoint["hyper_parameters"]


CODE_IN_A_HYPERPARAMETER = {
    "net": lambda c, m: model_hp(c).update(net=os_makedirs(m)),
    "net, nested": lambda c, m: model_hp(c)["net"].update(extra=os_makedirs(m)),
    "activation": lambda c, m: model_hp(c).update(
        activation={"_target_": "builtins.getattr", "_args_": [os_makedirs(m), "x", "sigmoid"]}
    ),
    "optimizer": lambda c, m: model_hp(c).update(optimizer={**os_makedirs(m), "_partial_": True}),
    "scheduler": lambda c, m: model_hp(c).update(scheduler=os_makedirs(m)),
    "label smoothing": lambda c, m: model_hp(c).update(label_smoothing=os_makedirs(m)),
    "augmentation": lambda c, m: c["datamodule_hyper_parameters"].update(augment=os_makedirs(m)),
}


@pytest.mark.parametrize("where", list(CODE_IN_A_HYPERPARAMETER))
def test_code_named_in_a_checkpoint_never_runs(where, trained_run, tmp_path):
    marker = tmp_path / "code_ran"
    path = crafted(trained_run, tmp_path, lambda c: CODE_IN_A_HYPERPARAMETER[where](c, marker))
    with pytest.raises(CheckpointError) as error:
        load_trained(path)
    assert str(error.value).startswith(f"{path} is not a checkpoint this project can load: ")
    assert "\n" not in str(error.value)
    assert not marker.exists()


def run_command(command: str, overrides: list[str], output_dir: Path):
    """A command's work on its composed config, in this process (up to serve's start)."""
    cfg = tool_config(command, overrides, output_dir)
    if command == "serve":
        return build_server(command_options(ServeOptions, cfg))
    return {"evaluate": evaluate, "predict": predict, "export": export_checkpoint}[command](cfg)


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "serve"])
def test_every_command_refuses_a_checkpoint_that_names_code(command, trained_run, tmp_path):
    marker = tmp_path / "code_ran"
    path = crafted(
        trained_run, tmp_path, lambda c: CODE_IN_A_HYPERPARAMETER["activation"](c, marker)
    )
    extra = {"predict": [f"inputs=[{tmp_path}]"]}.get(command, [])
    with pytest.raises(CheckpointError) as error:
        run_command(command, [f"ckpt_path={path}", *extra], tmp_path / "out")
    assert "is not a checkpoint this project can load" in str(error.value)
    assert "\n" not in str(error.value) and not marker.exists()


@contextmanager
def counting_server():
    """An HTTP server on 127.0.0.1 that answers 404 and counts what it was asked."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_checkpoint_cannot_choose_the_test_data_nor_where_it_comes_from(
    trained_run, fixture_data_dir, tmp_path
):
    """The checkpoint points at a folder of fake files (every label 1) and at a mirror of its
    own: evaluate tests on the data the command names."""

    fake = write_mnist(tmp_path / "fake", train=640, test=160)
    labels = fake / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:8] + bytes([1]) * 160)
    honest = evaluate(
        tool_config(
            "evaluate", [f"ckpt_path={trained_run}", f"data_dir={fixture_data_dir}"], tmp_path / "h"
        )
    )
    with counting_server() as (mirror, requests):

        def point_elsewhere(checkpoint):
            checkpoint["datamodule_hyper_parameters"].update(
                data_dir=str(fake), mirrors=[mirror], download=True
            )

        path = crafted(trained_run, tmp_path, point_elsewhere)
        results = evaluate(
            tool_config(
                "evaluate", [f"ckpt_path={path}", f"data_dir={fixture_data_dir}"], tmp_path / "e2"
            )
        )
    assert requests == []  # the checkpoint's mirror was never asked
    assert results["test/acc"] == pytest.approx(honest["test/acc"])  # the command's data


def finished(data_dir: Path, run_dir: Path, *overrides: str) -> dict:
    return train(
        compose([f"data.data_dir={data_dir}", *FAST, "trainer.max_epochs=2", *overrides], run_dir)
    )


def resume(run_dir: Path, data_dir: Path, *overrides: str) -> dict:
    return train(compose([f"resume={run_dir}", f"data.data_dir={data_dir}", *overrides], run_dir))


def test_a_checkpoint_cannot_make_resume_delete_or_write_outside_the_run(
    fixture_data_dir, tmp_path, caplog
):
    run_dir = tmp_path / "run"
    # The command line may drop the config's plugins: the run's own checkpoint plugin stays.
    finished(fixture_data_dir, run_dir, "++trainer.plugins=[]")
    unfinished(run_dir, 4)
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    escape = str(run_dir / "checkpoints" / ".." / ".." / "precious")
    for n, state in enumerate(checkpoint["callbacks"].values()):
        if "best_model_path" in state:
            escape = escape if n % 2 else f"local://{victim}"  # fsspec's name for the same folder
            state.update(best_model_path=escape, kth_best_model_path=escape, last_model_path=escape)
            state["best_k_models"] = {escape: torch.tensor(0.0)}
            state["dirpath"] = str(tmp_path / "elsewhere")
            if not n % 2:
                del state["dirpath"]
    torch.save(checkpoint, last)
    metrics = resume(run_dir, fixture_data_dir)
    assert (victim / "thesis.txt").read_text() == "years of work"
    assert not (tmp_path / "elsewhere").exists()
    assert metrics["epochs"] == 4
    assert "remembers paths outside this run's checkpoints/ folder; ignoring them" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "run"]


def damaged(record_file: Path, change) -> None:
    record = yaml.safe_load(record_file.read_text())
    change(record)
    record_file.write_text(yaml.safe_dump(record))


DAMAGED_RECORDS = {
    "an earlier version's record": (
        lambda f: damaged(f, lambda r: r.update(format=2)),
        "is not a run record of this version of the project; start a new run",
    ),
    "not YAML": (
        lambda f: f.write_text("config: [unclosed\n"),
        "is damaged or was edited by hand (ParserError: while parsing a flow sequence); mend",
    ),
    "a config that is not a mapping": (
        lambda f: damaged(f, lambda r: r.update(config=[1, 2])),
        "config is damaged or was edited by hand; start a new run",
    ),
    "an interpolation to nowhere": (
        lambda f: damaged(f, lambda r: r["config"]["trainer"].update(max_epochs="${nowhere}")),
        "trainer.max_epochs",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED_RECORDS))
def test_a_damaged_record_is_one_line_and_changes_nothing(case, fixture_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    finished(fixture_data_dir, run_dir)
    unfinished(run_dir, 3)
    change, expected = DAMAGED_RECORDS[case]
    change(run_dir / "run_config.yaml")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as error:
        resume(run_dir, fixture_data_dir)
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_refused_resume_of_a_live_run_changes_none_of_its_files(fixture_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    finished(fixture_data_dir, run_dir, "logger=csv")
    unfinished(run_dir, 3)
    with held_by_another_process(run_dir) as pid:
        files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        result = run_module("mnist_lightning.train", f"resume={run_dir}", data_dir=fixture_data_dir)
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == files
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert (
        result.stdout.strip()
        .splitlines()[-1]
        .startswith(f"error: {run_dir} is in use by process {pid} on ")
    )


def csv_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_resumed_runs_csv_log_is_that_of_an_uninterrupted_run(fixture_data_dir, tmp_path):
    overrides = ["logger=csv", "trainer.log_every_n_steps=2"]
    whole = tmp_path / "whole"
    finished(fixture_data_dir, whole, *overrides, "trainer.max_epochs=3")
    run_dir = tmp_path / "run"
    finished(fixture_data_dir, run_dir, *overrides)
    unfinished(run_dir, 3)
    header = list(csv_rows(run_dir)[0])
    with (run_dir / "metrics.csv").open("a", newline="") as f:  # what a killed attempt wrote
        csv.DictWriter(f, header).writerow({"epoch": 1, "step": 999, "val/acc": 1.0})
    resume(run_dir, fixture_data_dir)

    def steps(rows, name):
        return [int(r["step"]) for r in rows if r.get(name)]

    for name in ("train/loss_step", "val/acc", "train/loss", "lr-SGD"):
        assert steps(csv_rows(run_dir), name) == steps(csv_rows(whole), name), name
    assert 999 not in [int(r["step"]) for r in csv_rows(run_dir)]


def write_job(sweep: Path, name: str, overrides, files: dict[str, str]) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        overrides if isinstance(overrides, str) else yaml.safe_dump(overrides)
    )
    for file, text in files.items():
        (job / file).write_text(text)


def test_report_reads_a_sweep_folder_as_data(tmp_path, monkeypatch):
    from mnist_lightning.report import main as report_main

    monkeypatch.setenv("REPORT_SECRET", "s3cr3t-value")
    history = {"val/acc": [None, 0.9], "val_check/val/acc": [0.9], "val_check/images": [128]}
    good = {"val/acc_best": 0.9, "test/acc": 0.89, "epochs": 2, "history": history}
    gap = {**good, "history": {**history, "val_check/images": [None]}}  # only epochs have gaps
    sweep = tmp_path / "sweep"
    write_job(sweep, "0", ["optimizer=sgd"], {"metrics.json": json.dumps(good)})
    write_job(sweep, "1", ["model.activation=${oc.env:REPORT_SECRET}"], {})
    write_job(sweep, "2", ["optimizer=adam"], {"metrics.json": "{not json"})
    write_job(sweep, "3", ["optimizer=adamw"], {"failure.json": "[1, 2]"})
    write_job(sweep, "4", ["optimizer=rmsprop"], {"metrics.json": json.dumps({"history": "x"})})
    write_job(sweep, "5", ["label=$x^$|pipe"], {"metrics.json": json.dumps(good)})
    write_job(sweep, "6", "{: not yaml", {})
    write_job(sweep, "7", ["optimizer=adagrad"], {"metrics.json": json.dumps(gap)})
    assert report_main([str(sweep)]) == 0
    summary = (sweep / "summary.md").read_text() + (sweep / "summary.csv").read_text()
    assert "s3cr3t-value" not in summary and "${oc.env:REPORT_SECRET}" in summary
    rows = {r["job"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    assert rows["0"]["status"] == rows["5"]["status"] == "ok"
    assert rows["2"]["status"].startswith(
        "unreadable: metrics.json is damaged or was edited by hand (JSONDecodeError"
    )
    assert rows["3"]["status"] == "unreadable: failure.json is not a JSON object"
    assert (
        rows["4"]["status"]
        == rows["7"]["status"]
        == "unreadable: metrics.json: a history is not lists of finite numbers by name"
    )
    assert rows["6"]["status"] == "unreadable: .hydra/overrides.yaml is not valid YAML"
    assert rows["1"]["status"].startswith("failed: no metrics.json")
    assert "$x^$\\|pipe" in (sweep / "summary.md").read_text()  # one cell, not two
    assert (sweep / "summary.png").stat().st_size > 10_000


def test_outputs_never_replace_a_runs_files(trained_run, fixture_data_dir, tmp_path):
    files = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
    image = tmp_path / "digit.png"
    shutil.copyfile(Path(__file__).parents[1] / "docs" / "serve.png", image)
    for command, output, extra in (
        ("export", trained_run / "run_config.yaml", []),
        ("predict", trained_run / "metrics.json", [f"inputs=[{image}]"]),
    ):
        with pytest.raises(OutputError) as error:
            given = [f"ckpt_path={trained_run}", f"output={output}", *extra]
            run_command(command, given, tmp_path / command)
        assert str(error.value).startswith(
            f"output={output} is inside the run folder {trained_run}"
        )
    # Hydra writes its own files into hydra.run.dir before the command starts: a subprocess.
    result = run_module(
        "mnist_lightning.evaluate",
        f"ckpt_path={trained_run}",
        f"hydra.run.dir={trained_run}",
        data_dir=fixture_data_dir,
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"hydra.run.dir={trained_run} is inside the run folder" in result.stdout
    assert {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()} == files


COMMAND_BAD_VALUES = [
    ("evaluate", "max_misclassified=abc", "max_misclassified=abc: must be a whole number"),
    ("evaluate", "split=train", "split=train: must be one of test, val"),
    ("evaluate", "accelerator=tpu", "accelerator=tpu: must be one of auto, cpu"),
    ("predict", "top_k=0", "top_k=0: must be a whole number between 1 and 10"),
    ("predict", "+top=3", "top: no such setting; did you mean top_k?"),
    ("export", "format=pt", "format=pt: must be one of onnx, torch_export, torchscript"),
    ("serve", "port=abc", "port=abc: must be a whole number"),
    ("serve", "port=-1", "port=-1: must be a whole number between 1,024 and 65,535"),
    ("serve", "port=70000", "port=70000: must be a whole number between 1,024 and 65,535"),
    ("serve", "max_batch_size=0", "max_batch_size=0: must be a whole number between 1"),
    ("serve", "batch_timeout=-1", "batch_timeout=-1: must be a finite number between 0 and 10"),
    ("serve", "workers=0", "workers=0: must be a whole number between 1"),
    ("serve", "api_servers=0", "api_servers=0: must be a whole number between 1"),
    ("serve", "max_upload_mb=abc", "max_upload_mb=abc: must be a finite number above 0"),
    ("serve", "max_upload_mb=0", "max_upload_mb=0: must be a finite number above 0"),
    ("serve", "max_side=0", "max_side=0: must be a whole number between 28"),
    ("serve", "log_level=abc", "log_level=abc: must be one of critical"),
    ("serve", "accelerator=tpu", "accelerator=tpu: must be one of auto"),
    ("serve", "host=example.com", "host=example.com: must be one of 127.0.0.1"),
]


@pytest.mark.parametrize(
    "command, override, expected",
    COMMAND_BAD_VALUES,
    ids=[f"{c} {o}" for c, o, _ in COMMAND_BAD_VALUES],
)
def test_every_commands_bad_options_are_one_line_before_any_work(
    command, override, expected, trained_run, tmp_path
):
    from mnist_lightning import settings as schema

    options = {
        "evaluate": schema.EvaluateOptions,
        "predict": schema.PredictOptions,
        "export": schema.ExportOptions,
        "serve": schema.ServeOptions,
    }[command]
    extra = [f"inputs=[{tmp_path}]"] if command == "predict" else []
    cfg = tool_config(command, [f"ckpt_path={trained_run}", *extra, override], tmp_path / "out")
    with pytest.raises(ConfigError) as error:
        schema.command_options(options, cfg)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "serve"])
def test_a_command_without_its_checkpoint_says_only_that_it_is_missing(command, tmp_path):
    """One line per missing option, not also a type error for the None it stands for."""
    from mnist_lightning import settings as schema

    options = getattr(schema, f"{command.capitalize()}Options")
    with pytest.raises(ConfigError) as error:
        schema.command_options(options, tool_config(command, [], tmp_path / "out"))
    missing = ["ckpt_path", "inputs"] if command == "predict" else ["ckpt_path"]
    assert str(error.value).splitlines() == [
        f"{name}: missing; give it on the command line ({name}=...)" for name in missing
    ]


# An accelerator this machine lacks: no machine has both (MPS is Apple's, CUDA is not).
MISSING_ACCELERATOR = "mps" if torch.cuda.is_available() else "cuda"


def test_an_accelerator_this_machine_lacks_is_one_line_before_any_work(trained_run, tmp_path):
    """evaluate stopped in Lightning's traceback; serve waited for ever for its model's worker."""

    given = f"accelerator={MISSING_ACCELERATOR}"
    expected = (
        f"{given}: this machine has no {MISSING_ACCELERATOR.upper()} device that torch can use"
    )
    out = tmp_path / "evaluate"
    with pytest.raises(ConfigError) as error:
        evaluate(tool_config("evaluate", [f"ckpt_path={trained_run}", given], out))
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)
    assert not out.exists()
    options = command_options(
        ServeOptions, tool_config("serve", [f"ckpt_path={trained_run}", given], tmp_path / "serve")
    )
    with pytest.raises(ConfigError) as error:
        build_server(options)
    assert str(error.value).startswith(expected)


def test_a_commands_bad_option_is_exit_code_1_and_nothing_written(trained_run, tmp_path):
    out = tmp_path / "out"
    result = run_module(
        "mnist_lightning.predict",
        f"ckpt_path={trained_run}",
        f"inputs=[{tmp_path}]",
        "top_k=0",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("error: top_k=0: must be")
    assert sorted(p.name for p in out.iterdir()) == [".hydra", "predict.log"]


TRAIN_BAD_VALUES = [
    (
        f"trainer.accelerator={MISSING_ACCELERATOR}",
        f"trainer.accelerator={MISSING_ACCELERATOR}: this machine has no",
    ),
    ("+trainer.val_check_interval=0", "trainer.val_check_interval=0: must be a whole number"),
    (
        "callbacks.divergence_stop.divergence_threshold=abc",
        "callbacks.divergence_stop.divergence_threshold=abc: must be a finite number above 0",
    ),
    ("+data.expected_files=abc", "data.expected_files: no such setting"),
    # A setting that interpolates a bad one (the cosine schedule's T_max repeats
    # trainer.max_epochs) is not reported again.
    ("trainer.max_epochs=abc", "trainer.max_epochs=abc: must be a whole number"),
    ("scheduler=cosine trainer.max_epochs=0", "trainer.max_epochs=0: must be a whole number"),
    # The Trainer's `int | float` settings: Lightning would compare "abc" with 0 in the fit.
    ("+trainer.limit_train_batches=abc", "trainer.limit_train_batches=abc: must be a number"),
    ("+trainer.gradient_clip_val=abc", "trainer.gradient_clip_val=abc: must be a number"),
    # A schedule on val/acc where no validation measures it (Lightning's traceback in the fit).
    ("scheduler=plateau scheduler.interval=step", "scheduler.monitor=val/acc is measured only"),
    ("scheduler=plateau +trainer.limit_val_batches=0", "scheduler.monitor=val/acc is measured"),
    (
        "scheduler=plateau +trainer.check_val_every_n_epoch=null +trainer.val_check_interval=1000",
        "scheduler.monitor=val/acc is measured only by a validation, and "
        "trainer.check_val_every_n_epoch=null validates every N batches across epochs",
    ),
    ("+data.mirror=[x]", "data.mirror: no such setting; did you mean data.mirrors?"),
    (
        "+trainer.enable_checkpointing=false ~callbacks.last_checkpoint",
        "trainer.enable_checkpointing=false beside checkpoint callbacks: remove them too "
        "(~callbacks.model_checkpoint ~callbacks.graceful_interrupt);",
    ),
    ("model.net.name=resnet", "model.net.name=resnet: must be one of mlp, cnn"),
    ("model/net=custom", "model.net._target_: missing; name your class"),
    (
        "+callbacks.x._target_=no.such.Callback",
        "callbacks.x._target_=no.such.Callback: cannot be imported",
    ),
]


@pytest.mark.parametrize(
    "override, expected", TRAIN_BAD_VALUES, ids=[o for o, _ in TRAIN_BAD_VALUES]
)
def test_train_refuses_bad_values_before_writing_anything(
    override, expected, fixture_data_dir, tmp_path
):
    run_dir = tmp_path / "run"
    cfg = compose([f"data.data_dir={fixture_data_dir}", *FAST, *override.split()], run_dir)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)
    assert not run_dir.exists() or sorted(p.name for p in run_dir.iterdir()) == []


def test_a_damaged_optuna_study_is_one_line(fixture_data_dir, tmp_path):
    sweep = tmp_path / "optuna"
    sweep.mkdir()
    (sweep / "optuna.db").write_bytes(b"this is not a database, only bytes " * 40)
    result = run_module(
        "mnist_lightning.train",
        "hparams_search=optuna",
        *FAST,
        f"hydra.sweep.dir={sweep}",
        data_dir=fixture_data_dir,
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"error: sqlite:///{sweep}/optuna.db is not a readable Optuna study")
    assert sorted(p.name for p in sweep.iterdir()) == ["optuna.db"]


def test_a_read_only_run_is_refused_in_one_line_on_resume(fixture_data_dir, tmp_path):
    from tests.test_faults import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "disk", "20m") as disk:
        run_dir = disk / "run"
        finished(fixture_data_dir, run_dir)
        unfinished(run_dir, 3)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = run_module("mnist_lightning.train", f"resume={run_dir}", data_dir=fixture_data_dir)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write the folder {run_dir}") and "Read-only" in last


def test_a_checkpoint_of_an_earlier_version_is_one_line_saying_to_train_again(
    trained_run, tmp_path
):
    def earlier(checkpoint):
        hp = checkpoint["hyper_parameters"]
        hp["optimizer"] = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001}

    path = crafted(trained_run, tmp_path, earlier)
    with pytest.raises(CheckpointError) as error:
        load_trained(path)
    assert str(error.value) == (
        f"{path} was written by an earlier version of this project (it names its classes by "
        "import path); train the run again with this version."
    )

    def unknown(checkpoint):
        checkpoint["hyper_parameters"]["net"] = {"_target_": "somebody.else.Net"}

    with pytest.raises(CheckpointError, match="is your own network class somebody.else.Net"):
        load_trained(crafted(trained_run, tmp_path, unknown))


def test_a_network_of_your_own_runs_only_where_the_command_names_it(fixture_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    named = [
        "model/net=custom",
        "model.net._target_=tests.custom_net.TinyNet",
        "+model.net.hidden=16",
    ]
    finished(fixture_data_dir, run_dir, *named)
    with pytest.raises(CheckpointError, match="load it|loaded only when the command names it"):
        load_trained(run_dir)
    model = load_trained(run_dir, net_target="tests.custom_net.TinyNet").model
    assert sum(p.numel() for p in model.net.parameters()) == 784 * 16 + 16 + 16 * 10 + 10
    unfinished(run_dir, 3)  # the run's own record names its class: resume= alone continues it
    assert resume(run_dir, fixture_data_dir)["epochs"] == 3


def test_resume_takes_the_data_folder_from_the_command(fixture_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    finished(fixture_data_dir, run_dir)
    unfinished(run_dir, 3)
    moved_data = tmp_path / "data_elsewhere"
    shutil.copytree(fixture_data_dir, moved_data)
    metrics = resume(run_dir, moved_data)
    assert metrics["epochs"] == 3
    record = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    kept = json.dumps([record["choices"], record["config"]])
    assert str(tmp_path) not in kept and "data_dir" not in kept  # the record names no place


def test_checkpoints_of_a_run_name_no_place(trained_run):
    checkpoint = read_checkpoint(resolve_checkpoint(trained_run))
    text = json.dumps(
        [checkpoint["hyper_parameters"], checkpoint["datamodule_hyper_parameters"]], default=str
    )
    assert "/" not in text.replace("val/", "").replace("train/", "")
    assert "_target_" not in text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
