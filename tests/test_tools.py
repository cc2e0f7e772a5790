"""Using a trained model: evaluate, predict, export, and safe checkpoint loading."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from PIL import Image

from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.data import preprocess, to_model_input
from mnist_lightning.doors import images
from mnist_lightning.doors.checkpoints import load_trained, read_checkpoint
from mnist_lightning.errors import CheckpointError
from mnist_lightning.folders import resolve_checkpoint
from tests.conftest import load_fixture, onnx_session, run_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from user_digits import make_user_digits  # noqa: E402


def tool_config(name: str, overrides: list[str], output_dir: Path):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return hydra_compose(name, overrides=[*overrides, f"paths.output_dir={output_dir}"])


def test_evaluate_reproduces_the_training_test_metrics(
    trained_run, fixture_data_dir, tmp_path, monkeypatch
):
    from mnist_lightning.evaluate import evaluate

    monkeypatch.setenv("MNIST_DATA_DIR", str(fixture_data_dir))
    trained = json.loads((trained_run / "metrics.json").read_text())
    results = evaluate(tool_config("evaluate", [f"ckpt_path={trained_run}"], tmp_path / "test"))
    assert results["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-4)
    assert results["test/loss"] == pytest.approx(trained["test/loss"], abs=1e-4)
    assert results["checkpoint"] == str(trained_run / trained["test_checkpoint"])
    saved = json.loads((tmp_path / "test" / "eval.json").read_text())
    assert sum(map(sum, saved["confusion_matrix"])) == 160 == saved["images"]
    assert len(saved["per_class"]["precision"]) == 10
    assert (tmp_path / "test" / "confusion_matrix.png").is_file()

    val = evaluate(
        tool_config("evaluate", [f"ckpt_path={trained_run}", "split=val"], tmp_path / "val")
    )
    assert val["images"] == 128
    assert val["val/acc"] == pytest.approx(
        trained["val/acc_best"], abs=1e-4
    )  # the best checkpoint's


def test_preprocessing_undoes_what_users_do_to_a_digit(fixture_data_dir):
    digit = load_fixture(fixture_data_dir)["test"][0][0, 0].numpy()
    light_on_dark = Image.fromarray(digit).resize((300, 300), Image.BICUBIC)
    reference = preprocess.to_mnist(light_on_dark)[0].float()

    dark_on_light = Image.fromarray(255 - np.asarray(light_on_dark))
    sheet = Image.new("L", (700, 500), 255)
    sheet.paste(dark_on_light, (380, 20))  # off centre, on a much larger page
    rgba = Image.new("RGBA", light_on_dark.size, (0, 0, 0, 0))
    rgba.putalpha(light_on_dark)  # black strokes on a transparent background
    for variant in (dark_on_light.convert("RGB"), sheet, rgba):
        result = preprocess.to_mnist(variant)
        assert result.shape == (1, 28, 28) and result.dtype == torch.uint8
        assert (result[0].float() - reference).abs().mean() < 4

    # MNIST's layout: the digit fits 20x20 and its centre of mass sits at the centre.
    ink = reference / reference.sum()
    center = [float((ink.sum(dim=1 - axis) * torch.arange(28)).sum()) for axis in (0, 1)]
    assert all(abs(c - 13.5) <= 0.75 for c in center)
    rows, cols = torch.nonzero(reference > 0, as_tuple=True)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 21

    with pytest.raises(preprocess.ImageError, match="no ink"):
        preprocess.to_mnist(Image.new("RGB", (64, 64), "white"))


def test_predict_reads_user_images_and_reports_bad_files(trained_run, fixture_data_dir, tmp_path):
    images, labels = load_fixture(fixture_data_dir)["test"]
    folder = tmp_path / "digits"
    made = make_user_digits(images[:60, 0].numpy(), labels[:60].numpy(), folder)
    (folder / "notes.txt").write_text("not an image, skipped")
    (folder / "text_renamed.png").write_text("hello, I am not a PNG")
    good_png = made[0][0].read_bytes()
    (folder / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    Image.new("RGB", (120, 120), "white").save(folder / "blank.png")
    (folder / "empty.jpg").write_bytes(b"")
    large = Image.open(made[1][0]).resize((3000, 3000))
    large.save(tmp_path / "large.png")

    output = tmp_path / "results.json"
    result = run_module(
        "mnist_lightning.predict",
        f"ckpt_path={trained_run}",
        f"inputs=[{folder},{tmp_path / 'large.png'}]",
        f"output={output}",
        "save_preprocessed=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        data_dir=fixture_data_dir,
    )
    assert result.returncode == 1, result.stderr[-2000:]  # some files failed
    assert "ignored 1 non-image file(s)" in result.stdout
    rows = {Path(r["file"]).name: r for r in json.loads(output.read_text())}
    assert "not an image file" in rows["text_renamed.png"]["error"]
    assert "damaged or truncated" in rows["truncated.png"]["error"]
    assert "no ink" in rows["blank.png"]["error"]
    assert "empty" in rows["empty.jpg"]["error"]
    assert rows["large.png"]["digit"] == made[1][1]
    correct = sum(rows[p.name]["digit"] == label for p, label in made)
    assert correct / len(made) >= 0.9
    top = rows[made[0][0].name]["top"]
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
    assert len(list((tmp_path / "run" / "preprocessed").glob("*.png"))) == len(made) + 1
    line = next(line for line in result.stdout.splitlines() if made[0][0].name in line)
    assert f"digit {made[0][1]}" in line and "top 3:" in line


def test_exported_models_match_pytorch(trained_run, fixture_data_dir, tmp_path):
    from mnist_lightning.export import export, exportable

    module = exportable(trained_run)
    images = load_fixture(fixture_data_dir)["test"][0].float() / 255
    model = load_trained(trained_run).model
    with torch.no_grad():
        expected = model(to_model_input((images * 255).to(torch.uint8))).numpy()

    session = onnx_session(export(module, "onnx", tmp_path / "m.onnx"))
    for batch in (images, images[:1], images[:37]):  # any batch size
        (logits,) = session.run(None, {"images": batch.numpy()})
        np.testing.assert_allclose(logits, expected[: len(batch)], atol=1e-4)

    scripted = torch.jit.load(str(export(module, "torchscript", tmp_path / "m.pt")))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(images).numpy(), expected, atol=1e-4)

    program = torch.export.load(str(export(module, "torch_export", tmp_path / "m.pt2")))
    with torch.no_grad():
        for batch in (images, images[:1], images[:37]):  # any batch size
            logits = program.module()(batch).numpy()
            np.testing.assert_allclose(logits, expected[: len(batch)], atol=1e-4)


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(trained_run, tmp_path):
    payload = Payload()
    payload.marker = tmp_path / "pwned"
    checkpoint = read_checkpoint(resolve_checkpoint(trained_run))
    checkpoint["hyper_parameters"]["activation"] = payload
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    with pytest.raises(
        CheckpointError,
        match="refused to load .*pickled Python objects.*Nothing in it was executed",
    ):
        load_trained(evil)
    assert not payload.marker.exists()

    with evil.open("wb") as f:  # a plain pickle, not even a torch file
        pickle.dump({"state_dict": payload}, f)
    with pytest.raises(CheckpointError):
        load_trained(evil)
    assert not payload.marker.exists()


def test_missing_truncated_and_foreign_checkpoints_are_reported(trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope.ckpt")
    good = resolve_checkpoint(trained_run).read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good[: len(good) // 3])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_trained(truncated)
    weights_only = tmp_path / "weights.ckpt"
    torch.save({"weight": torch.zeros(3)}, weights_only)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_trained(weights_only)
    other = read_checkpoint(resolve_checkpoint(trained_run))
    other["state_dict"]["net.hidden1.weight"] = torch.zeros(64, 784)  # another architecture
    wrong = tmp_path / "wrong.ckpt"
    torch.save(other, wrong)
    with pytest.raises(CheckpointError, match=r"holds another network \(net.hidden1.weight is"):
        load_trained(wrong)


def test_the_tools_end_in_one_clear_line_on_a_bad_checkpoint(tmp_path):
    result = run_module("mnist_lightning.evaluate", f"ckpt_path={tmp_path / 'missing.ckpt'}")
    assert result.returncode == 1
    assert "error: checkpoint" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_export_refuses_an_output_that_would_destroy_or_cannot_be_written(trained_run, tmp_path):
    from mnist_lightning.errors import UserError
    from mnist_lightning.export import check_output

    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    before = checkpoint.read_bytes()
    result = run_module(
        "mnist_lightning.export",
        f"ckpt_path={checkpoint}",
        f"output={checkpoint}",
        f"hydra.run.dir={tmp_path / 'export'}",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stdout.strip()
        .splitlines()[-1]
        .startswith(f"error: output={checkpoint} is inside the run folder {trained_run}")
    )
    assert checkpoint.read_bytes() == before
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=f"output={tmp_path} is a folder"):
        check_output(tmp_path)
    with pytest.raises(UserError, match="cannot write the folder"):
        check_output(blocker / "model.onnx")
    with pytest.raises(UserError, match="is a checkpoint's name"):
        check_output(tmp_path / "model.ckpt")


def test_export_replaces_an_existing_file_whole(trained_run, tmp_path, monkeypatch):
    from mnist_lightning.errors import OutputError
    from mnist_lightning.export import export, exportable

    module = exportable(trained_run)
    output = export(module, "torchscript", tmp_path / "model.pt")
    before = output.read_bytes()

    def disk_full(fd):  # the new file is written, but cannot be made durable
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OutputError, match="No space left on device"):
        export(module, "torchscript", output)
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def mnist_digits(request, fixture_data_dir, count: int):
    """Real MNIST test digits when MNIST_DATA_DIR is set, else the fixture's."""
    import os

    if os.environ.get("MNIST_DATA_DIR"):
        return load_mnist_real(os.environ["MNIST_DATA_DIR"], count)
    images, labels = load_fixture(fixture_data_dir)["test"]
    return images[:count], labels[:count]


def load_mnist_real(data_dir: str, count: int):
    from mnist_lightning.data.mnist_files import load_mnist

    images, labels = load_mnist(data_dir, download=False)["test"]
    return images[:count], labels[:count]


def test_predict_on_mnist_digits_saved_as_png_answers_as_evaluate_does(
    request, trained_run, fixture_data_dir, tmp_path
):
    """2,000 test digits (the fixture's 160 offline) saved as PNG files: predict reads each back
    to exactly the tensor evaluate feeds the model, so their answers agree one for one."""
    from mnist_lightning.predict import predict

    images, labels = mnist_digits(request, fixture_data_dir, 2000)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{i:05d}.png")
    results = predict(
        tool_config("predict", [f"ckpt_path={trained_run}", f"inputs=[{folder}]"], tmp_path / "p")
    )
    model = load_trained(trained_run).model
    with torch.no_grad():
        direct = model(to_model_input(images)).argmax(dim=1)
    predicted = torch.tensor([r["digit"] for r in results])
    assert torch.equal(predicted, direct)
    accuracy = float((predicted == labels).float().mean())
    assert accuracy == pytest.approx(float((direct == labels).float().mean()))


def test_16_bit_and_float_images_are_read_at_their_own_depth(fixture_data_dir, tmp_path):
    digit = load_fixture(fixture_data_dir)["test"][0][0, 0].numpy().astype(np.float32)
    digit = np.where(digit > 40, digit, 0)  # the fixture's noisy background off
    reference = preprocess.to_mnist(Image.fromarray(digit.astype(np.uint8)))[0].float()
    big = (300, 300)
    variants = {
        "grey16.png": Image.fromarray((digit / 255 * 32768).astype(np.uint16)),  # mid-grey ink
        "grey16_big.png": Image.fromarray((digit / 255 * 32768).astype(np.uint16)).resize(big),
        "float01.tif": Image.fromarray(digit / 255, mode="F"),
        "float01_big.tif": Image.fromarray(digit / 255, mode="F").resize(big),
    }
    for name, image in variants.items():
        image.save(tmp_path / name)
        result = preprocess.to_mnist(images.load_image(tmp_path / name))[0].float()
        assert result.max() >= 200, name  # ink, not "no digit found"
        assert (result - reference).abs().mean() < 12, name
