"""MNISTDataModule: files, checks, split, batches."""

from __future__ import annotations

import gzip
import shutil
from types import SimpleNamespace
from urllib.error import URLError

import pytest
import torch

from mnist_lightning import data, mnist_files
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.errors import MNISTDataError
from tests.conftest import FIXTURE_TEST, FIXTURE_TRAIN


def make_datamodule(data_dir, **kwargs) -> MNISTDataModule:
    datamodule = MNISTDataModule(
        data_dir=str(data_dir), val_size=kwargs.pop("val_size", 128), **kwargs
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


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
    datamodule.trainer = SimpleNamespace(training=True)
    x, y = datamodule.on_after_batch_transfer((raw_x, raw_y), 0)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    # Evaluation batches are larger: no optimizer step, only the speed differs.
    datamodule.trainer = SimpleNamespace(training=False)
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

    torch.manual_seed(3)
    a = next(iter(first.train_dataloader()))[1]
    torch.manual_seed(3)
    b = next(iter(first.train_dataloader()))[1]
    assert torch.equal(a, b)
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


def test_missing_data_without_network_ends_in_one_clear_message(tmp_path, monkeypatch):
    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise URLError("no network")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    with pytest.raises(MNISTDataError) as error:
        mnist_files.load_mnist(tmp_path / "empty")
    message = str(error.value)
    for name in mnist_files.RAW_FILES:
        assert name in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "data.data_dir" in message and "MNIST_DATA_DIR" in message
    assert "\n" not in message  # one message, not a wall of mirror errors
    assert tried and "lecun" not in tried[0]  # the working mirror is tried first


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
        mnist_files.load_mnist(fresh_data_dir, download=False)
    assert str(victim) in str(error.value)
    assert expected in str(error.value)
    assert "Delete it and run again" in str(error.value)


def test_a_corrupt_gz_file_is_named(fresh_data_dir):
    raw = fresh_data_dir / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(MNISTDataError, match="t10k-labels-idx1-ubyte.gz is not a readable gzip"):
        mnist_files.load_mnist(fresh_data_dir, download=False)
    assert not (raw / "t10k-labels-idx1-ubyte").exists()  # no half-written file left behind


def test_labels_outside_0_to_9_are_refused(fresh_data_dir):
    path = fresh_data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    content = bytearray(path.read_bytes())
    content[-1] = 42
    path.write_bytes(bytes(content))
    with pytest.raises(MNISTDataError, match="label 42"):
        mnist_files.load_mnist(fresh_data_dir, download=False)


def test_image_and_label_counts_must_agree(fresh_data_dir, tmp_path):
    from tests.conftest import write_mnist

    other = write_mnist(tmp_path / "other", train=FIXTURE_TRAIN + 10)
    shutil.copyfile(
        other / "MNIST" / "raw" / "train-labels-idx1-ubyte",
        fresh_data_dir / "MNIST" / "raw" / "train-labels-idx1-ubyte",
    )
    with pytest.raises(MNISTDataError, match="holds 640 images but"):
        mnist_files.load_mnist(fresh_data_dir, download=False)


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
        "_target_": "mnist_lightning.augment.BatchAugment",
        "degrees": 15,
        "elastic_alpha": 20.0,
        "elastic_bank": 64,
    }
    datamodule = make_datamodule(fixture_data_dir, augment=augment)
    images, labels = next(iter(datamodule.val_dataloader()))
    twins = (images[:1].repeat(8, 1, 1, 1), labels[:1].repeat(8))

    datamodule.trainer = SimpleNamespace(training=False)
    x_eval, _ = datamodule.on_after_batch_transfer(twins, 0)
    assert torch.equal(x_eval, data.to_model_input(twins[0]))  # validation/test untouched

    datamodule.trainer = SimpleNamespace(training=True)
    x_train, y_train = datamodule.on_after_batch_transfer(twins, 0)
    assert x_train.shape == (8, 1, 28, 28) and torch.equal(y_train, twins[1])
    flat = x_train.flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) == 8  # eight copies, eight different draws
    # Space moved in from outside the image is MNIST's black, not grey.
    background = (0 - data.MNIST_MEAN) / data.MNIST_STD
    assert x_train.min() >= background - 1e-5
