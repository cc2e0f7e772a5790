"""`python -m mnist_lightning.serve`: the HTTP API and the drawing page, as a real server process."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_lightning.data.datamodule import to_model_input
from mnist_lightning.training.checkpoints import load_trained, read_checkpoint, resolve_checkpoint
from tests.conftest import ROOT, compose, free_port, load_fixture, run_module

SCREENSHOT = ROOT / "docs" / "serve.png"  # the README's picture, remade with UPDATE_SCREENSHOT=1
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def running_server(ckpt_path: Path, *overrides: str):
    """The serve command as a real process on 127.0.0.1 and a free port; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_lightning.serve",
            f"ckpt_path={ckpt_path}",
            f"port={port}",
            *overrides,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its worker processes share the group, and go with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited:\n{process.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the server never became healthy"
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        deadline = time.time() + 10  # its worker processes shut down after it
        while (
            subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True).returncode == 0
        ):
            if time.time() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise AssertionError("server processes were left running after Ctrl-C")
            time.sleep(0.1)


def post(base: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}/predict", data=body, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_json(base: str, payload) -> tuple[int, dict]:
    return post(base, json.dumps(payload).encode())


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(content: bytes, filename: str = "digit.png") -> tuple[bytes, str]:
    boundary = "mnistboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def server(drawing_case):
    """One server for the module, on the checkpoint the browser test needs."""
    with running_server(drawing_case[0]) as base:
        yield base


@pytest.fixture(scope="module")
def served_run(drawing_case):
    return drawing_case[0]


@pytest.fixture(scope="module")
def digits(fixture_data_dir):
    images, labels = load_fixture(fixture_data_dir)["test"]
    return images[:8], labels[:8]


def expected_answers(trained_run, images: torch.Tensor) -> torch.Tensor:
    model = load_trained(trained_run).model
    with torch.no_grad():
        return model(to_model_input(images)).softmax(dim=1)


def test_each_kind_of_input_gets_the_models_answer(server, served_run, digits):
    images, _ = digits
    expected = expected_answers(served_run, images)
    digit = images[0, 0].numpy()
    as_png = png(digit)
    answers = {
        "pixels": post_json(server, {"pixels": digit.tolist()}),
        "base64": post_json(server, {"image": base64.b64encode(as_png).decode()}),
        "data URL": post_json(
            server, {"image": "data:image/png;base64," + base64.b64encode(as_png).decode()}
        ),
        "upload": post(server, *multipart(as_png)),
    }
    for kind, (status, answer) in answers.items():
        assert status == 200, (kind, answer)
        assert answer["digit"] == int(expected[0].argmax()), kind
        np.testing.assert_allclose(answer["probabilities"], expected[0].tolist(), atol=1e-5)
        assert len(answer["top3"]) == 3 and answer["top3"][0][0] == answer["digit"]
        seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["preprocessed"]))))
        assert np.array_equal(seen, digit), kind  # an MNIST-style digit reaches the model as it is


def test_a_photo_of_a_digit_is_preprocessed_as_predict_does(server, digits):
    from mnist_lightning.data import preprocess

    images, _ = digits
    big = Image.fromarray(255 - images[1, 0].numpy()).resize((300, 300))  # dark ink, big
    buffer = io.BytesIO()
    big.convert("RGB").save(buffer, format="JPEG")
    status, answer = post(server, *multipart(buffer.getvalue(), "photo.jpg"))
    assert status == 200
    expected = preprocess.to_mnist(preprocess.decode_image(buffer.getvalue()))
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["preprocessed"]))))
    assert np.array_equal(seen, expected[0].numpy())


BAD = {
    "empty body": (b"", "application/json", 400, "empty request"),
    "not JSON": (b"{not json", "application/json", 400, "not JSON or a multipart upload"),
    "not an image": (
        json.dumps({"image": base64.b64encode(b"hello").decode()}).encode(),
        "application/json",
        415,
        "not an image file",
    ),
    "not base64": (
        json.dumps({"image": "%%%"}).encode(),
        "application/json",
        422,
        "not valid base64",
    ),
    "truncated": (None, "application/json", 422, "damaged or truncated"),
    "wrong shape": (
        json.dumps({"pixels": [[0] * 28] * 27}).encode(),
        "application/json",
        422,
        "28 rows of 28 numbers",
    ),
    "wrong type": (
        json.dumps({"pixels": [["a"] * 28] * 28}).encode(),
        "application/json",
        422,
        "numbers only",
    ),
    "out of range": (
        json.dumps({"pixels": [[300] * 28] * 28}).encode(),
        "application/json",
        422,
        "between 0 and 255",
    ),
    "unknown key": (
        json.dumps({"digit": 3}).encode(),
        "application/json",
        422,
        "send an image file",
    ),
    "a list": (json.dumps([1, 2, 3]).encode(), "application/json", 422, "send an image file"),
    "blank": (None, "application/json", 422, "no digit found"),
    "huge header": (None, "application/json", 413, "at most 4096 pixels a side"),
    "over 10 MB": (b"x" * 10_500_000, "application/json", 413, "over 10 MB"),
    "empty upload": (None, "multipart", 422, "empty"),
}


def bad_body(name: str, digits) -> tuple[bytes, str]:
    body, content_type, _, _ = BAD[name]
    if name == "truncated":
        whole = png(digits[0][0, 0].numpy())
        body = json.dumps({"image": base64.b64encode(whole[: len(whole) // 2]).decode()}).encode()
    elif name == "blank":
        body = json.dumps(
            {"image": base64.b64encode(png(np.zeros((64, 64), np.uint8))).decode()}
        ).encode()
    elif name == "huge header":
        buffer = io.BytesIO()
        Image.new("1", (5000, 10)).save(buffer, format="PNG")  # tiny file, 5000 px wide
        body = json.dumps({"image": base64.b64encode(buffer.getvalue()).decode()}).encode()
    elif name == "empty upload":
        body, content_type = multipart(b"")
    return body, content_type


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_4xx_with_one_line_and_the_server_goes_on(name, server, digits):
    body, content_type = bad_body(name, digits)
    status, answer = post(server, body, content_type)
    assert status == BAD[name][2], answer
    assert BAD[name][3] in answer["detail"] and "\n" not in answer["detail"]
    assert post_json(server, {"pixels": digits[0][0, 0].tolist()})[0] == 200  # still serving


def test_concurrent_requests_are_all_answered(server, served_run, digits):
    images, _ = digits
    expected = expected_answers(served_run, images).argmax(dim=1).tolist()
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(
            pool.map(lambda i: post_json(server, {"pixels": images[i % 8, 0].tolist()}), range(64))
        )
    assert all(status == 200 for status, _ in answers)
    assert [a["digit"] for _, a in answers] == [expected[i % 8] for i in range(64)]


def test_the_page_and_the_health_check(server):
    with urllib.request.urlopen(f"{server}/", timeout=10) as response:
        page = response.read().decode()
        assert response.headers["content-type"].startswith("text/html")
    assert "<canvas" in page and "/predict" in page
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    with urllib.request.urlopen(f"{server}/health", timeout=10) as response:
        assert response.read() == b"ok"


@pytest.mark.parametrize("problem", ["missing", "foreign", "unsafe"])
def test_a_bad_checkpoint_stops_the_server_before_it_starts(problem, trained_run, tmp_path):
    from omegaconf import OmegaConf

    from mnist_lightning.errors import CheckpointError
    from mnist_lightning.serve.server import build_server

    checkpoint = tmp_path / "model.ckpt"
    if problem == "foreign":
        torch.save({"weight": torch.zeros(3)}, checkpoint)
    elif problem == "unsafe":
        state = read_checkpoint(resolve_checkpoint(trained_run))
        state["hyper_parameters"]["activation"] = Path("not/data")  # a pickled object
        torch.save(state, checkpoint)
    cfg = OmegaConf.load(ROOT / "conf" / "serve.yaml")
    cfg.ckpt_path = str(checkpoint)
    expected = {
        "missing": "does not exist",
        "foreign": "is not a Lightning checkpoint of this project",
        "unsafe": "refused to load",
    }[problem]
    with pytest.raises(CheckpointError, match=expected):
        build_server(cfg)


def test_a_port_in_use_stops_the_command_in_one_line(trained_run, tmp_path):
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = run_module(
            "mnist_lightning.serve",
            f"ckpt_path={trained_run}",
            f"port={port}",
            f"hydra.run.dir={tmp_path / 'run'}",
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stdout.strip()
        .splitlines()[-1]
        .startswith(f"error: cannot listen on 127.0.0.1:{port}")
    )


# --- the page, in a real browser --------------------------------------------------------------


@pytest.fixture(scope="module")
def drawing_case(fixture_data_dir, trained_run, tmp_path_factory):
    """What the browser draws and the checkpoint that must read it: a real MNIST test digit
    and a model trained briefly on real MNIST when MNIST_DATA_DIR is set (as in CI), else a
    digit of the stand-in set and the model trained on it."""
    data_dir = os.environ.get("MNIST_DATA_DIR")
    if not data_dir:
        images, labels = load_fixture(fixture_data_dir)["test"]
        return trained_run, images[0, 0].numpy(), int(labels[0])
    from mnist_lightning.data.mnist_files import load_mnist
    from mnist_lightning.train import train

    run_dir = tmp_path_factory.mktemp("real")
    train(
        compose(
            [
                f"data.data_dir={data_dir}",
                "experiment=relu_adam",
                "trainer.max_epochs=1",
                "+trainer.limit_train_batches=300",
                "logger=none",
                "test=false",
            ],
            run_dir,
        )
    )
    images, labels = load_mnist(data_dir, download=False)["test"]
    return run_dir, images[0, 0].numpy(), int(labels[0])  # a 7


def strokes(digit: np.ndarray, scale: int = 10, threshold: int = 100):
    """The digit as pen strokes on a 280x280 canvas: one stroke per run of ink in each row."""
    for row in range(digit.shape[0]):
        ink = np.flatnonzero(digit[row] > threshold)
        if not len(ink):
            continue
        runs = np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1)
        for run in runs:
            y = row * scale + scale / 2
            yield (run[0] * scale + scale / 2, y), (run[-1] * scale + scale / 2, y)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    chromium() is None, reason="no Chromium on PATH (CI installs Debian's chromium)"
)
def test_a_digit_drawn_in_the_browser_is_read(server, drawing_case, tmp_path):
    from playwright.sync_api import sync_playwright

    _, digit, label = drawing_case
    base = server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 960, "height": 480})
        try:
            page.goto(base + "/")
            pad = page.locator("#pad").bounding_box()
            for (x0, y0), (x1, y1) in strokes(digit):
                page.mouse.move(pad["x"] + x0, pad["y"] + y0)
                page.mouse.down()
                page.mouse.move(pad["x"] + x1, pad["y"] + y1, steps=4)
                page.mouse.up()
            page.wait_for_function(
                "() => document.getElementById('seen').src.startsWith('data:image/png')"
            )
            page.wait_for_timeout(500)  # the last stroke's answer
            assert page.locator("#digit").inner_text() == str(label)
            shown = [page.get_by_test_id(f"p{d}").inner_text() for d in range(10)]
            probabilities = [float(text.rstrip("%")) for text in shown]
            assert sum(probabilities) == pytest.approx(100, abs=0.5)
            assert max(probabilities) == probabilities[label]
            if os.environ.get("UPDATE_SCREENSHOT"):
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOT))
        except Exception:
            failure = tmp_path / "page.png"
            page.screenshot(path=str(failure))
            print(f"screenshot of the page: {failure}")
            raise
        finally:
            browser.close()
