"""The MNIST family: Fashion-MNIST with one override (`data=fashion_mnist`), its class names
wherever a class shows, its framing of a user's photo, and any dataset of the same format as one
config file. On the real Fashion-MNIST when MNIST_DATA_DIR holds it (CI), else on the stand-in
files (the same tiny IDX files in FashionMNIST/raw/)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mnist_lightning.data.datasets import IdxDataset
from mnist_lightning.data.mnist_files import ensure_raw_files, load_mnist
from mnist_lightning.data.preprocess import to_product
from mnist_lightning.errors import CheckpointError, MNISTDataError
from mnist_lightning.train import train
from tests.conftest import FAST, compose, fixture_files, hydra_quoted, run_module
from tests.test_serve import CHROMIUM_FLAGS, chromium, multipart, png, post, running_server
from tests.test_tools import tool_config

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker"]
CLASSES += ["Bag", "Ankle boot"]
FASHION = IdxDataset.of(
    yaml.safe_load((Path(__file__).parents[1] / "conf/data/fashion_mnist.yaml").read_text())[
        "dataset"
    ]
)


def real_fashion() -> Path | None:
    root = os.environ.get("MNIST_DATA_DIR")
    return Path(root) if root and (Path(root) / "FashionMNIST" / "raw").is_dir() else None


@pytest.fixture(scope="module")
def fashion_data(fixture_data_dir) -> Path:
    return real_fashion() or fixture_data_dir


@pytest.fixture(scope="module")
def fashion_run(fashion_data, tmp_path_factory) -> tuple[Path, dict]:
    """A model trained briefly on Fashion-MNIST (300 batches of the real set), with its metrics."""
    run_dir = tmp_path_factory.mktemp("fashion")
    overrides = ["data=fashion_mnist", f"data.data_dir={fashion_data}", "trainer.max_epochs=1"]
    overrides += ["model.activation=relu", "optimizer=adam", "logger=none"]
    overrides += ["+trainer.limit_train_batches=300"] if real_fashion() else FAST
    return run_dir, train(compose(overrides, run_dir))


def test_fashion_mnist_is_one_override_and_its_checkpoint_names_it(fashion_run):
    run_dir, metrics = fashion_run
    assert metrics["test/acc"] > (0.7 if real_fashion() else 0.1)
    checkpoint = torch.load(next((run_dir / "checkpoints").glob("epoch=*.ckpt")), weights_only=True)
    data = checkpoint["datamodule_hyper_parameters"]
    # What it learnt, by name; never where the files are or come from.
    assert data["dataset"] == {
        "name": "fashion_mnist",
        "classes": CLASSES,
        "mean": 0.286,
        "std": 0.353,
        "framing": "product",
    }
    assert not {"data_dir", "mirrors", "download"} & set(data)
    record = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    assert record["choices"]["data"] == "fashion_mnist"


def test_evaluate_tests_on_the_dataset_it_learnt_with_its_class_names(
    fashion_run, fashion_data, tmp_path
):
    from mnist_lightning.evaluate import evaluate

    run_dir, trained = fashion_run
    cfg = tool_config("evaluate", [f"ckpt_path={run_dir}", f"data_dir={fashion_data}"], tmp_path)
    results = evaluate(cfg)
    assert results["dataset"] == "fashion_mnist" and results["classes"] == CLASSES
    assert results["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-4)
    assert len(results["per_class"]["recall"]) == 10
    assert (tmp_path / "confusion_matrix.png").is_file()


def fashion_test_images(data_dir: Path, count: int):
    images, labels = load_mnist(data_dir, download=False, dataset=FASHION)["test"]
    return images[:count, 0].numpy(), labels[:count].numpy()


def as_photo(image: np.ndarray) -> Image.Image:
    """A product as a user photographs it: dark on a white table, larger, off centre, in colour."""
    product = Image.fromarray(255 - image).resize((224, 224), Image.BICUBIC)
    table = Image.new("L", (400, 300), 255)
    table.paste(product, (150, 40))
    return table.convert("RGB")


def test_a_photo_of_a_product_is_framed_as_fashion_mnist_frames_its_own(fashion_data):
    images, _ = fashion_test_images(fashion_data, 40)
    alike = []
    for image in images:
        framed = to_product(as_photo(image))
        assert framed.shape == (1, 28, 28) and framed.dtype == torch.uint8
        alike.append(np.corrcoef(framed[0].flatten().numpy(), image.flatten())[0, 1])
    assert np.median(alike) > 0.9  # the photo becomes the dataset's own image again


def test_predict_answers_in_the_datasets_classes(fashion_run, fashion_data, tmp_path):
    from mnist_lightning.predict import predict

    run_dir, _ = fashion_run
    images, labels = fashion_test_images(fashion_data, 30)
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, image in enumerate(images):
        as_photo(image).save(folder / f"{index:02d}.jpg", quality=92)
    output = tmp_path / "answers.csv"
    overrides = [f"ckpt_path={run_dir}", f"inputs={folder}", f"output={output}"]
    results = predict(tool_config("predict", overrides, tmp_path / "run"))
    rows = list(csv.DictReader(output.open()))
    assert list(rows[0]) == ["file", "class", "name", "probability", "top", "error"]
    assert all(row["name"] == CLASSES[int(row["class"])] for row in rows)
    right = sum(r["class"] == int(label) for r, label in zip(results, labels, strict=True))
    if real_fashion():
        assert right >= 0.6 * len(labels)  # photos of products, read by a briefly trained model


def test_serve_and_its_drawing_page_answer_in_class_names(fashion_run, fashion_data, tmp_path):
    run_dir, _ = fashion_run
    image, label = (a[0] for a in fashion_test_images(fashion_data, 1))
    with running_server(run_dir) as base:
        status, answer = post(base, *multipart(png(image)))
        assert status == 200 and set(answer) >= {"class", "name", "probability", "top"}
        assert answer["name"] == CLASSES[answer["class"]] and "digit" not in answer
        if chromium() is None:
            return
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
            page = browser.new_page()
            try:
                page.goto(base + "/")
                labels = page.locator("#bars > span:not([data-testid])").all_inner_texts()
                assert labels == CLASSES
                page.set_input_files(
                    "#file",
                    files=[{"name": "p.png", "mimeType": "image/png", "buffer": png(image)}],
                )
                page.wait_for_function(
                    "() => document.getElementById('seen').src.startsWith('data:')"
                )
                assert page.locator("#digit").inner_text() == answer["name"]
            finally:
                browser.close()


def test_mirror_images_are_for_clothes_only(fashion_data, tmp_path):
    from mnist_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^augment.mirror=0.5: a digit's mirror image"):
        train(compose(["augment=fashion", "data.data_dir=/nowhere"], tmp_path / "a"))
    overrides = ["data=fashion_mnist", "augment=fashion", f"data.data_dir={fashion_data}"]
    metrics = train(compose([*overrides, *FAST, "+trainer.limit_train_batches=4"], tmp_path / "b"))
    assert metrics["global_step"] == 4


@pytest.mark.parametrize(
    "where, value",
    [
        ("classes", ["<script>", *CLASSES[1:]]),
        ("classes", CLASSES[:9]),
        ("name", "../../etc"),
        ("std", 0.0),
        ("framing", "poster"),
    ],
)
def test_a_checkpoints_dataset_is_typed_on_the_way_in(fashion_run, where, value, tmp_path):
    from mnist_lightning.doors.checkpoints import load_trained

    run_dir, _ = fashion_run
    checkpoint = torch.load(next((run_dir / "checkpoints").glob("epoch=*.ckpt")), weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["dataset"][where] = value
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    with pytest.raises(CheckpointError, match=f"datamodule_hyper_parameters.dataset.{where}"):
        load_trained(crafted)


def test_any_dataset_of_the_format_is_one_config_file(tmp_path):
    """A dataset of MNIST's format with its own names, folder, MD5s and classes: one YAML file in
    a config folder of the user's own (hydra.searchpath), and the train command learns it."""
    files = fixture_files(train=300, test=60)
    raw = tmp_path / "data" / "Letters" / "raw"
    raw.mkdir(parents=True)
    names = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    described = {}
    for role, name in names.items():
        own = f"letters-{role.replace('_', '-')}.idx"
        (raw / own).write_bytes(files[name])
        items = 300 if role.startswith("train") else 60
        described[role] = {"file": own, "md5": hashlib.md5(files[name]).hexdigest(), "items": items}
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True)
    dataset = {
        "name": "letters",
        "folder": "Letters",
        "files": described,
        "mirrors": [],
        "classes": [f"letter {c}" for c in "ABCDEFGHIJ"],
        "mean": 0.2,
        "std": 0.3,
        "framing": "digit",
    }
    (conf / "letters.yaml").write_text(
        yaml.safe_dump({"defaults": ["mnist", "_self_"], "dataset": dataset})
    )
    run_dir = tmp_path / "run"
    searchpath = f"hydra.searchpath=[{hydra_quoted('file://' + str(tmp_path / 'conf'))}]"
    result = run_module(
        "mnist_lightning.train",
        searchpath,
        "data=letters",
        f"data.data_dir={tmp_path / 'data'}",
        "data.val_size=60",
        "trainer.max_epochs=1",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        env_remove=("MNIST_LIGHTNING_TEST_FILES",),  # its own MD5s say what its files are
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 4  # 240 images in batches of 64
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["dataset"]["classes"][0] == "letter A"
    # evaluate finds its files by the name the checkpoint gives, in the same config folders.
    result = run_module(
        "mnist_lightning.evaluate",
        searchpath,
        f"ckpt_path={run_dir}",
        f"data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        env_remove=("MNIST_LIGHTNING_TEST_FILES",),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["dataset"] == "letters" and evaluated["images"] == 60
    # A damaged file is refused by the dataset's own MD5, in one line.
    damaged = bytearray((raw / described["test_labels"]["file"]).read_bytes())
    damaged[-1] ^= 1
    (raw / described["test_labels"]["file"]).write_bytes(bytes(damaged))
    with pytest.raises(MNISTDataError, match=r"^Letters file .* not the expected file \(MD5"):
        ensure_raw_files(tmp_path / "data", False, None, IdxDataset.of(dataset))


def test_fashion_mnist_downloads_from_its_own_mirror_with_mnists_messages(tmp_path):
    from torchvision.datasets import MNIST, FashionMNIST

    from mnist_lightning.data.datasets import MNIST as OURS
    from tests.test_data import GOOD, TRUNCATED, http_mirror

    assert list(FASHION.mirrors) == FashionMNIST.mirrors  # torchvision's, when none is given
    assert list(OURS.mirrors) == MNIST.mirrors
    with http_mirror(TRUNCATED) as cut, pytest.raises(MNISTDataError) as error:
        ensure_raw_files(tmp_path / "a", mirrors=[cut], dataset=FASHION)
    message = str(error.value)
    assert "\n" not in message and message.startswith("Could not download train-images-idx3-ubyte")
    assert "Put the four FashionMNIST files" in message and "FashionMNIST/raw/" in message
    assert not list((tmp_path / "a" / "FashionMNIST" / "raw").iterdir())  # nothing half-written
    with http_mirror(TRUNCATED) as cut, http_mirror(GOOD) as good:
        root = ensure_raw_files(tmp_path / "b", mirrors=[cut, good], dataset=FASHION)
    assert sorted(p.name for p in (root / "FashionMNIST" / "raw").iterdir()) == sorted(
        FASHION.file(role) for role in FASHION.files
    )


def test_an_exported_fashion_model_normalises_as_fashion_mnist(fashion_run, fashion_data, tmp_path):
    from mnist_lightning.data import to_model_input
    from mnist_lightning.doors.checkpoints import load_trained
    from mnist_lightning.export import export, exportable
    from tests.conftest import onnx_session

    run_dir, _ = fashion_run
    images = torch.from_numpy(fashion_test_images(fashion_data, 16)[0])[:, None]
    model = load_trained(run_dir).model
    with torch.no_grad():
        expected = model(to_model_input(images, True, None, FASHION.mean, FASHION.std)).numpy()
    session = onnx_session(export(exportable(run_dir), "onnx", tmp_path / "m.onnx"))
    (logits,) = session.run(None, {"images": (images.float() / 255).numpy()})
    np.testing.assert_allclose(logits, expected, atol=1e-4)
