"""MNISTDataModule: files, checks, split, batches."""

from __future__ import annotations

import gzip
import shutil
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.plugins.precision import Precision

from mnist_lightning import data
from mnist_lightning.data import mnist_files
from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.data.order import ResumableLoader, TrainingOrder
from mnist_lightning.errors import MNISTDataError
from tests.conftest import (
    FAST,
    FIXTURE_TEST,
    FIXTURE_TRAIN,
    accept_files,
    fixture_files,
    load_fixture,
    run_module,
)


def make_datamodule(data_dir, **kwargs) -> MNISTDataModule:
    datamodule = MNISTDataModule(
        data_dir=str(data_dir), val_size=kwargs.pop("val_size", 128), **kwargs
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_the_training_order_is_a_function_of_seed_and_epoch_and_resumes_from_its_state():
    order = TrainingOrder(100, seed=5)
    epoch0 = list(order)
    order.set_epoch(1)
    loader = ResumableLoader(range(100), batch_size=8, sampler=order)
    batches = iter(loader)
    first = [next(batches) for _ in range(3)]
    state = loader.state_dict()
    assert state == {"seed": 5, "epoch": 1, "position": 24}  # three batches handed out
    rest = list(batches)
    assert sorted(epoch0) == list(range(100)) and epoch0 != [int(i) for b in first for i in b]
    elsewhere = ResumableLoader(range(100), batch_size=8, sampler=TrainingOrder(100, seed=0))
    elsewhere.load_state_dict(state)  # a new process, as on resume
    assert [b.tolist() for b in elsewhere] == [b.tolist() for b in rest]
    elsewhere.sampler.set_epoch(0)
    assert list(elsewhere.sampler) == epoch0  # an epoch's order is (seed, epoch) alone


def test_split_sizes_and_official_test_set(fixture_data_dir):
    datamodule = make_datamodule(fixture_data_dir)
    sizes = {name: len(split) for name, split in datamodule.splits.items()}
    assert sizes == {"train": FIXTURE_TRAIN - 128, "val": 128, "test": FIXTURE_TEST}


def test_batches_have_the_lessons_shapes_and_dtypes(fixture_data_dir):
    datamodule = make_datamodule(fixture_data_dir, eval_batch_size=100)
    raw_x, raw_y = next(iter(datamodule.train_dataloader()))
    assert raw_x.dtype == torch.uint8  # scaling happens after the transfer, on the device
    assert raw_x.shape == (64, 1, 28, 28)  # one loader item is one optimizer batch
    assert len(datamodule.train_dataloader()) == -(-(FIXTURE_TRAIN - 128) // 64)
    datamodule.trainer = SimpleNamespace(training=True, precision_plugin=Precision())
    x, y = datamodule.on_after_batch_transfer((raw_x, raw_y), 0)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    # Evaluation batches are larger: no optimizer step, only the speed differs.
    datamodule.trainer = SimpleNamespace(training=False, precision_plugin=Precision())
    x, y = datamodule.on_after_batch_transfer(next(iter(datamodule.val_dataloader())), 0)
    assert x.shape == (100, 1, 28, 28) and y.shape == (100,)


def test_an_epoch_of_batches_is_each_training_image_once_with_its_label(fixture_data_dir):
    datamodule = make_datamodule(fixture_data_dir)
    train = datamodule.splits["train"]
    label_of = {
        image.numpy().tobytes(): int(label)
        for image, label in zip(train.images, train.labels, strict=True)
    }
    torch.manual_seed(7)
    batches = list(datamodule.train_dataloader())
    seen = [
        (image.numpy().tobytes(), int(label))
        for x, y in batches
        for image, label in zip(x, y, strict=True)
    ]
    assert len(seen) == len(train) and len({image for image, _ in seen}) == len(label_of)
    assert all(label_of[image] == label for image, label in seen)
    assert not torch.equal(batches[0][1], train.labels[:64])  # shuffled


def test_normalisation_and_the_lessons_plain_totensor_input(fixture_data_dir):
    batch = next(iter(make_datamodule(fixture_data_dir).test_dataloader()))
    plain = data.to_model_input(batch[0], normalize=False)
    assert plain.min() >= 0.0 and plain.max() <= 1.0
    normalised = data.to_model_input(batch[0], normalize=True)
    torch.testing.assert_close(normalised, (plain - 0.1307) / 0.3081)


def test_split_is_fixed_and_training_order_follows_the_seed(fixture_data_dir):
    first, second = make_datamodule(fixture_data_dir), make_datamodule(fixture_data_dir)
    assert torch.equal(first.splits["val"].labels, second.splits["val"].labels)
    assert torch.equal(first.splits["val"].images, second.splits["val"].images)
    other = make_datamodule(fixture_data_dir, split_seed=1)
    assert not torch.equal(first.splits["val"].images, other.splits["val"].images)
    # Val and train never share an image index.
    assert len(first.splits["train"]) + len(first.splits["val"]) == FIXTURE_TRAIN

    # The order is drawn from the run's seed (pl.seed_everything) and the epoch, nothing else.
    torch.manual_seed(3)
    a = next(iter(make_datamodule(fixture_data_dir).train_dataloader()))[1]
    torch.manual_seed(3)
    b = next(iter(make_datamodule(fixture_data_dir).train_dataloader()))[1]
    torch.manual_seed(4)
    c = next(iter(make_datamodule(fixture_data_dir).train_dataloader()))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    unshuffled = make_datamodule(fixture_data_dir, shuffle=False)
    batch_labels = next(iter(unshuffled.train_dataloader()))[1]
    assert torch.equal(batch_labels, unshuffled.splits["train"].labels[: len(batch_labels)])


def test_gz_files_in_a_read_only_folder_are_used_without_network(
    fresh_data_dir, tmp_path, monkeypatch
):
    raw = fresh_data_dir / "MNIST" / "raw"
    for name in mnist_files.RAW_FILES:
        with (raw / name).open("rb") as src, gzip.open(raw / f"{name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        (raw / name).unlink()
    monkeypatch.setattr(
        mnist_files, "_writable", lambda folder: folder != raw
    )  # root ignores chmod
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(mnist_files, "_download", lambda *a: pytest.fail("must not download"))
    loaded = mnist_files.load_mnist(fresh_data_dir)
    assert loaded["train"][0].shape == (FIXTURE_TRAIN, 1, 28, 28)
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{n}.gz" for n in mnist_files.RAW_FILES)
    assert (
        tmp_path / "cache" / "mnist_lightning" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    ).is_file()


@contextmanager
def http_mirror(files: dict[str, bytes]):
    """A real HTTP server on 127.0.0.1 serving `files` by name (404 for anything else)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def gz_files(files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{name}.gz": gzip.compress(content) for name, content in files.items()}


GOOD = gz_files(fixture_files())
ERROR_PAGE = {name: b"<html><body>Access denied</body></html>" for name in GOOD}
TRUNCATED = {name: content[: len(content) // 2] for name, content in GOOD.items()}


def test_the_first_run_downloads_mnist_where_the_loader_reads_it(tmp_path):
    """End to end: an empty data folder, a mirror serving an error page, one serving truncated
    files, one serving the right files; training runs on what was downloaded."""
    data_dir = tmp_path / "data"
    with http_mirror(ERROR_PAGE) as bad, http_mirror(TRUNCATED) as cut, http_mirror(GOOD) as good:
        result = run_module(
            "mnist_lightning.train",
            f"data.data_dir={data_dir}",
            f"data.mirrors=[{bad},{cut},{good}]",
            *FAST,
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    raw = data_dir / "MNIST" / "raw"
    assert sorted(p.name for p in data_dir.iterdir()) == ["MNIST"]  # no stray folder
    assert sorted(p.name for p in raw.iterdir()) == sorted(mnist_files.RAW_FILES)
    assert (raw / "train-images-idx3-ubyte").read_bytes() == fixture_files()[
        "train-images-idx3-ubyte"
    ]
    assert f"downloaded t10k-labels-idx1-ubyte from {good}" in result.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_a_download_that_fails_everywhere_says_why_in_one_line(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = f"http://127.0.0.1:{closed.getsockname()[1]}/"  # bound, never listening
    with (
        http_mirror(ERROR_PAGE) as bad,
        http_mirror(TRUNCATED) as cut,
        pytest.raises(MNISTDataError) as error,
    ):
        mnist_files.ensure_raw_files(tmp_path, mirrors=[bad, cut, refused])
    closed.close()
    message = str(error.value)
    assert "\n" not in message and message.startswith("Could not download train-images-idx3-ubyte")
    assert f"{bad}train-images-idx3-ubyte.gz: " in message and "not a readable gzip" in message
    assert f"{cut}train-images-idx3-ubyte.gz: " in message
    assert f"{refused}train-images-idx3-ubyte.gz: " in message
    assert "MNIST_DATA_DIR" in message
    leftovers = [p.name for p in (tmp_path / "MNIST" / "raw").iterdir()]
    assert leftovers == []  # nothing half-downloaded under any name


def test_a_mirror_serving_other_files_is_refused_by_md5(tmp_path):
    labels = fixture_files()["t10k-labels-idx1-ubyte"]
    other = dict(GOOD)  # the same files but one label changed: same size, same count
    other["t10k-labels-idx1-ubyte.gz"] = gzip.compress(labels[:-1] + bytes([(labels[-1] + 1) % 10]))
    with (
        http_mirror(other) as mirror,
        pytest.raises(MNISTDataError, match="is not the expected file .MD5"),
    ):
        mnist_files.ensure_raw_files(tmp_path, mirrors=[mirror])


def test_swapped_train_and_test_files_are_named(real_data_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in mnist_files.RAW_FILES:
        swapped = name.replace("train", "T").replace("t10k", "train").replace("T", "t10k")
        shutil.copyfile(real_data_dir / "MNIST" / "raw" / swapped, raw / name)
    with pytest.raises(
        MNISTDataError,
        match="holds 10,000 items where the expected file holds 60,000 .train and test files swapped",
    ):
        mnist_files.ensure_raw_files(tmp_path, download=False)


def test_missing_data_with_download_off(tmp_path):
    with pytest.raises(MNISTDataError, match="MNIST is missing.*MNIST_DATA_DIR"):
        mnist_files.load_mnist(tmp_path, download=False)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated or corrupt"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"\x00\x00\x08\x01" + p.read_bytes()[4:]), "wrong magic number"),
        (lambda p: p.write_bytes(b"GIF89a" + bytes(100)), "wrong magic number"),
    ],
    ids=["truncated", "empty", "wrong-magic", "not-idx"],
)
def test_a_damaged_file_is_named_with_the_fix(fresh_data_dir, damage, expected):
    victim = fresh_data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte"
    damage(victim)
    with pytest.raises(MNISTDataError) as error:
        load_fixture(fresh_data_dir)
    assert str(victim) in str(error.value)
    assert expected in str(error.value)
    assert "Delete it and run again" in str(error.value)


def test_a_corrupt_gz_file_is_named(fresh_data_dir):
    raw = fresh_data_dir / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(MNISTDataError, match="t10k-labels-idx1-ubyte.gz is not a readable gzip"):
        load_fixture(fresh_data_dir)
    assert not (raw / "t10k-labels-idx1-ubyte").exists()  # no half-written file left behind


def test_a_gz_that_inflates_past_its_file_is_refused_as_it_inflates(fresh_data_dir, tmp_path):
    """A .gz of 200 kB that would inflate to 200 MB (a local file, or a mirror's): gunzip stops
    at the size of the file it should hold, and leaves nothing behind."""
    raw = fresh_data_dir / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    labels = fixture_files()["t10k-labels-idx1-ubyte"]
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as bomb:
        bomb.write(labels)
        for _ in range(200):
            bomb.write(bytes(1 << 20))
    official_size = 8 + 10_000  # the largest file it may be: the official test labels
    with pytest.raises(
        MNISTDataError, match=f"is a .gz that inflates past {official_size:,} bytes"
    ):
        load_fixture(fresh_data_dir)
    left = {p.name for p in raw.iterdir()}
    assert left == {*mnist_files.RAW_FILES, "t10k-labels-idx1-ubyte.gz"} - {
        "t10k-labels-idx1-ubyte"
    }
    served = {**GOOD, "t10k-labels-idx1-ubyte.gz": (raw / "t10k-labels-idx1-ubyte.gz").read_bytes()}
    with http_mirror(served) as mirror, pytest.raises(MNISTDataError, match="inflates past"):
        mnist_files.ensure_raw_files(tmp_path, mirrors=[mirror])
    downloaded = sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir())
    assert downloaded == sorted(set(mnist_files.RAW_FILES) - {"t10k-labels-idx1-ubyte"})


def test_labels_outside_0_to_9_are_refused(fresh_data_dir, monkeypatch):
    raw = fresh_data_dir / "MNIST" / "raw"
    path = raw / "t10k-labels-idx1-ubyte"
    content = bytearray(path.read_bytes())
    content[-1] = 42
    path.write_bytes(bytes(content))
    # Declared as they are now, so that the label check itself is what refuses them.
    damaged = accept_files({name: (raw / name).read_bytes() for name in mnist_files.RAW_FILES})
    monkeypatch.setenv(mnist_files.TEST_FILES_VARIABLE, damaged)
    with pytest.raises(MNISTDataError, match="label 42"):
        mnist_files.load_mnist(fresh_data_dir, download=False)


def test_image_and_label_counts_must_agree(fresh_data_dir, tmp_path):
    from tests.conftest import write_mnist

    other = write_mnist(tmp_path / "other", train=FIXTURE_TRAIN + 10)
    shutil.copyfile(
        other / "MNIST" / "raw" / "train-labels-idx1-ubyte",
        fresh_data_dir / "MNIST" / "raw" / "train-labels-idx1-ubyte",
    )
    with pytest.raises(MNISTDataError, match="holds 650 items where the expected file holds 640"):
        load_fixture(fresh_data_dir)


def test_val_size_must_leave_training_images(fixture_data_dir):
    with pytest.raises(MNISTDataError, match="data.val_size=640"):
        make_datamodule(fixture_data_dir, val_size=FIXTURE_TRAIN)


def test_real_mnist_is_the_official_set(real_data_dir):
    loaded = mnist_files.load_mnist(real_data_dir, download=False)
    images, labels = loaded["train"]
    assert images.shape == (60_000, 1, 28, 28) and images.dtype == torch.uint8
    assert loaded["test"][0].shape == (10_000, 1, 28, 28)
    assert torch.bincount(labels).tolist()[:2] == [5923, 6742]  # the official class counts


def test_augmentation_applies_to_training_batches_only_with_a_draw_per_image(fixture_data_dir):
    from types import SimpleNamespace

    augment = {
        "degrees": 15,
        "elastic_alpha": 20.0,
        "elastic_bank": 64,
    }
    datamodule = make_datamodule(fixture_data_dir, augment=augment)
    images, labels = next(iter(datamodule.val_dataloader()))
    twins = (images[:1].repeat(8, 1, 1, 1), labels[:1].repeat(8))

    datamodule.trainer = SimpleNamespace(training=False, precision_plugin=Precision())
    x_eval, _ = datamodule.on_after_batch_transfer(twins, 0)
    assert torch.equal(x_eval, data.to_model_input(twins[0]))  # validation/test untouched

    datamodule.trainer = SimpleNamespace(training=True, precision_plugin=Precision())
    x_train, y_train = datamodule.on_after_batch_transfer(twins, 0)
    assert x_train.shape == (8, 1, 28, 28) and torch.equal(y_train, twins[1])
    flat = x_train.flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) == 8  # eight copies, eight different draws
    # Space moved in from outside the image is MNIST's black, not grey.
    background = (0 - data.MNIST_MEAN) / data.MNIST_STD
    assert x_train.min() >= background - 1e-5


def test_a_symlink_loop_as_data_dir_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(MNISTDataError, match=f"data.data_dir={loop} cannot be opened"):
        mnist_files.ensure_raw_files(loop, download=False)


def test_an_unreadable_data_file_is_one_line(fresh_data_dir, monkeypatch):
    victim = fresh_data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    real_open = Path.open

    def denied(self, *args, **kwargs):  # the tests run as root, whom chmod does not stop
        if self == victim:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(MNISTDataError) as error:
        load_fixture(fresh_data_dir)
    assert str(error.value) == (
        f"cannot read {victim} (permission denied); fix its permissions or point data.data_dir "
        "at a readable copy of MNIST."
    )
