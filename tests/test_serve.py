"""`python -m mnist_lightning.serve`: the HTTP API and the drawing page, as a real server process."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.data import to_model_input
from mnist_lightning.doors.checkpoints import load_trained, read_checkpoint
from mnist_lightning.folders import resolve_checkpoint
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


def start_server(ckpt_path: Path, *overrides: str) -> tuple[subprocess.Popen, str]:
    """The serve command as a real process on 127.0.0.1 and a free port, once it answers its
    health check; the process and its base URL."""
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
        start_new_session=True,  # its HTTP and model processes share the group
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the server exited:\n{process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.read() == b"ok":
                    return process, base
        except OSError:
            pass
        assert time.time() < deadline, "the server never became healthy"
        time.sleep(0.2)


def stop_server(process: subprocess.Popen, how: str = "ctrl-c", seconds: float = 15) -> str:
    """Stop it as a user (Ctrl-C: SIGINT to the whole group) or a service manager (SIGTERM to
    the serve command's process) would; assert that every process of it ends within `seconds`
    and exit code 0; return what it printed."""
    deadline = time.time() + seconds
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"the server did not stop within {seconds} s of {how}") from None
    while subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True).returncode == 0:
        if time.time() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"server processes were left running after {how}")
        time.sleep(0.1)
    assert process.returncode == 0, output[-3000:]
    return output


@contextmanager
def running_server(ckpt_path: Path, *overrides: str):
    """A server for the block's requests; yields its base URL. Stopped with Ctrl-C after: every
    process of it ends, with exit code 0 and no traceback, and the port is free again."""
    process, base = start_server(ckpt_path, *overrides)
    try:
        yield base
    finally:
        output = stop_server(process)
        assert "Traceback" not in output, output[-3000:]
        assert_port_free(int(base.rsplit(":", 1)[1]))


def assert_port_free(port: int) -> None:
    with socket.socket() as probe:  # nothing listens there any more: a new server can
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()


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
        assert len(answer["top"]) == 3 and answer["top"][0][0] == answer["digit"]
        assert answer["probability"] == answer["probabilities"][answer["digit"]]
        seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["preprocessed"]))))
        assert np.array_equal(seen, digit), kind  # an MNIST-style digit reaches the model as it is


def test_a_photo_of_a_digit_is_preprocessed_as_predict_does(server, digits):
    from mnist_lightning.data import preprocess
    from mnist_lightning.doors.images import decode_image

    pictures, _ = digits
    big = Image.fromarray(255 - pictures[1, 0].numpy()).resize((300, 300))  # dark ink, big
    buffer = io.BytesIO()
    big.convert("RGB").save(buffer, format="JPEG")
    status, answer = post(server, *multipart(buffer.getvalue(), "photo.jpg"))
    assert status == 200
    expected = preprocess.to_mnist(decode_image(buffer.getvalue()))
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
    from mnist_lightning.settings import ServeOptions, command_options

    checkpoint = tmp_path / "model.ckpt"
    if problem == "foreign":
        torch.save({"weight": torch.zeros(3)}, checkpoint)
    elif problem == "unsafe":
        state = read_checkpoint(resolve_checkpoint(trained_run))
        state["hyper_parameters"]["activation"] = Path("not/data")  # a pickled object
        torch.save(state, checkpoint)
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "serve.yaml")
    cfg.ckpt_path = str(checkpoint)
    options = command_options(ServeOptions, cfg)
    expected = {
        "missing": "does not exist",
        "foreign": "is not a Lightning checkpoint of this project",
        "unsafe": "refused to load",
    }[problem]
    with pytest.raises(CheckpointError, match=expected):
        build_server(options)


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


# --- hostile and concurrent clients ------------------------------------------------------------


def png_with_broken_exif(digit: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG", exif=b"Exif\x00\x00not a TIFF block")
    return buffer.getvalue()


def lab_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("LAB", (28, 28), (50, 0, 0)).save(buffer, format="TIFF")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG of a header and no pixels: what PIL's own decompression-bomb guard reads."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def float_tiff_bomb() -> bytes:
    """~100 kB that decodes to 4096 x 4096 32-bit floats (67 MB)."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4096, 4096), np.float32), "F").save(
        buffer, format="TIFF", compression="tiff_adobe_deflate"
    )
    return buffer.getvalue()


def raw_post(base: str, body: bytes, headers: list[tuple[str, str]]) -> tuple[int, dict]:
    """A POST with exactly these headers (repeated ones too), over a real socket."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/predict")
    for name, value in headers:
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    status, text = response.status, response.read()
    connection.close()
    return status, json.loads(text) if text else {}


def hostile(digits) -> dict[str, tuple[bytes, list[tuple[str, str]], int, str]]:
    """Requests that once ended in a 500 or a failed batch: body, headers, status, reason."""
    digit = digits[0][0, 0].numpy()
    upload, multipart_type = multipart(png(digit))
    many = (
        "".join(
            f'--b\r\nContent-Disposition: form-data; name="f{i}"; filename="{i}.png"\r\n\r\nx\r\n'
            for i in range(1001)
        ).encode()
        + b"--b--\r\n"
    )
    json_type = [("Content-Type", "application/json")]
    return {
        "deeply nested JSON": (
            b"[" * 100_000 + b"]" * 100_000,
            json_type,
            400,
            "nested too deeply",
        ),
        "multipart without a boundary": (
            upload,
            [("Content-Type", "multipart/form-data")],
            400,
            "form cannot be read",
        ),
        "1,001 files": (
            many,
            [("Content-Type", "multipart/form-data; boundary=b")],
            400,
            "form cannot be read",
        ),
        "a form without an image": (
            b"a=1",
            [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
            422,
            "no file in the form",
        ),
        "two Content-Type headers": (
            b"{}",
            [*json_type, ("Content-Type", "text/plain")],
            400,
            "more than one Content-Type",
        ),
        "an unknown Content-Type": (
            b"hello",
            [("Content-Type", "text/plain")],
            415,
            "not JSON or a form",
        ),
        "a PNG with a broken EXIF block": (
            json.dumps({"image": base64.b64encode(png_with_broken_exif(digit)).decode()}).encode(),
            json_type,
            422,
            "damaged or truncated",
        ),
        "a LAB TIFF": (
            json.dumps({"image": base64.b64encode(lab_tiff()).decode()}).encode(),
            json_type,
            422,
            "cannot be read as a digit",
        ),
        "a PNG header over PIL's own pixel limit": (
            json.dumps(
                {"image": base64.b64encode(png_header_only(20_000, 10_000)).decode()}
            ).encode(),
            json_type,
            413,
            "too many pixels to decode",
        ),
        "a float TIFF that decodes to 67 MB": (
            json.dumps({"image": base64.b64encode(float_tiff_bomb()).decode()}).encode(),
            json_type,
            413,
            "would take 67 MB to decode; at most 16 MB",
        ),
        "27 rows of pixels": (
            json.dumps({"pixels": [[0] * 28] * 27}).encode(),
            json_type,
            422,
            "28 rows of 28 numbers",
        ),
        "a pixel of 401 digits": (
            json.dumps({"pixels": [[10**400] + [0] * 27] + [[0] * 28] * 27}).encode(),
            json_type,
            422,
            "between 0 and 255",
        ),
        "a data URL without its comma": (
            json.dumps({"image": "data:image/png;base64"}).encode(),
            json_type,
            422,
            "a data URL without base64 data",
        ),
        "9 MB of empty form fields": (
            b"&" * 9_000_000,
            [("Content-Type", "application/x-www-form-urlencoded")],
            400,
            "form cannot be read",
        ),
        "a 16-bit PNG that decodes to 48 MB": (
            json.dumps({"image": base64.b64encode(png16_bomb()).decode()}).encode(),
            json_type,
            413,
            "I;16 pixels would take 48 MB to decode; at most 16 MB",
        ),
    }


def png16_bomb() -> bytes:
    """A few kB that decode to 2828 x 2828 16-bit pixels, and a float copy of them."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2828, 2828), np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_no_malformed_request_is_a_500(server, digits):
    for name, (body, headers, status, reason) in hostile(digits).items():
        got, answer = raw_post(server, body, headers)
        assert (got, reason in answer.get("detail", "")) == (status, True), (name, got, answer)
        assert "\n" not in answer["detail"], name
    # A client that waits to be told to send (Expect: 100-continue, as curl does for big
    # uploads) gets its 413 without sending the body at all.
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\nExpect: 100-continue\r\n\r\n"
        )
        assert connection.recv(200).startswith(b"HTTP/1.1 413")
    # An upload with the media type in another case is still an upload (it is case-insensitive).
    body, content_type = multipart(png(digits[0][0, 0].numpy()))
    status, answer = raw_post(
        server,
        body,
        [("Content-Type", content_type.replace("multipart/form-data", "Multipart/Form-Data"))],
    )
    assert status == 200 and answer["digit"] in range(10)


def test_a_bad_request_never_fails_the_good_ones_batched_with_it(server, served_run, digits):
    images, _ = digits
    expected = expected_answers(served_run, images).argmax(dim=1).tolist()
    bad = hostile(digits)
    bad_bodies = [
        bad[name] for name in ("27 rows of pixels", "a PNG with a broken EXIF block", "a LAB TIFF")
    ]
    done = threading.Event()
    refused = []

    def hostile_client(i: int) -> None:
        while not done.is_set():
            body, headers, status, _ = bad_bodies[i % len(bad_bodies)]
            refused.append(raw_post(server, body, headers)[0] == status)

    hostile_threads = [threading.Thread(target=hostile_client, args=(i,)) for i in range(4)]
    for thread in hostile_threads:
        thread.start()
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(
                pool.map(
                    lambda i: post_json(server, {"pixels": images[i % 8, 0].tolist()}), range(300)
                )
            )
    finally:
        done.set()
        for thread in hostile_threads:
            thread.join()
    assert [status for status, _ in answers] == [200] * 300
    assert [a["digit"] for _, a in answers] == [expected[i % 8] for i in range(300)]
    assert len(refused) > 20 and all(refused)  # the hostile clients were served all along


@pytest.mark.parametrize("api_servers", [1, 6])
def test_sigterm_stops_every_process_and_frees_the_port(served_run, api_servers):
    """What systemd, Docker and Kubernetes send to the serve command's process alone (Ctrl-C,
    to every process, is how each test's server stops: running_server): within the 10 s they
    give it, even with clients that stalled in the middle of an upload, on every HTTP server
    (LitServe stops them one after another, each waiting up to its graceful timeout)."""
    process, base = start_server(served_run, f"api_servers={api_servers}")
    host, port = base.removeprefix("http://").split(":")
    uploads = [socket.create_connection((host, int(port)), timeout=10) for _ in range(12)]
    for upload in uploads:
        upload.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"[" * 1000
        )
    time.sleep(0.5)
    output = stop_server(process, "sigterm", seconds=10)
    for upload in uploads:
        upload.close()
    assert "Traceback" not in output, output[-3000:]
    assert_port_free(int(base.rsplit(":", 1)[1]))


def test_predict_gives_each_hostile_file_its_own_line_and_predicts_the_rest(
    served_run, digits, tmp_path
):
    from mnist_lightning.predict import predict
    from tests.test_tools import tool_config

    images, _ = digits
    folder = tmp_path / "inbox"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(images[i, 0].numpy()).save(folder / f"good{i}.png")
    (folder / "broken_exif.png").write_bytes(png_with_broken_exif(images[0, 0].numpy()))
    (folder / "lab.tif").write_bytes(lab_tiff())
    (folder / "bomb.png").write_bytes(png_header_only(20_000, 10_000))
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")
    (folder / "a_folder.png").mkdir()
    Image.fromarray(images[4, 0].numpy()).save(folder / "two\nlines.png")
    output = tmp_path / "answers.csv"
    results = predict(
        tool_config(
            "predict",
            [f"ckpt_path={served_run}", f"inputs=[{folder}]", f"output={output}"],
            tmp_path / "p",
        )
    )
    by_name = {Path(r["file"]).name: r for r in results}
    for name in ("good0.png", "good1.png", "good2.png", "good3.png", "two\nlines.png"):
        assert "digit" in by_name[name], name
    assert "damaged or truncated" in by_name["broken_exif.png"]["error"]
    assert "cannot be read as a digit" in by_name["lab.tif"]["error"]
    assert "too many pixels to decode" in by_name["bomb.png"]["error"]
    for name in ("loop.png", "dangling.png"):
        assert "broken link or a link loop" in by_name[name]["error"], name
    assert "a folder" in by_name["a_folder.png"]["error"]
    import csv

    with output.open(newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(results) == 11
    assert {Path(r["file"]).name for r in written} == set(by_name)


def test_predict_quotes_a_file_name_that_would_break_its_line(served_run, digits, tmp_path):
    images, _ = digits
    name = tmp_path / "two\nlines.png"
    Image.fromarray(images[0, 0].numpy()).save(name)
    result = run_module(
        "mnist_lightning.predict",
        f"ckpt_path={served_run}",
        f"inputs=[{tmp_path}]",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stdout[-2000:]
    line = next(line for line in result.stdout.splitlines() if "lines.png" in line)
    assert json.dumps(str(name)) in line and "digit" in line


def test_only_litserves_shutdown_race_is_dropped_from_its_log():
    """LitServe's monitor logs a traceback when a stop takes its manager away under it
    (serve.server.ManagerGoneAtShutdown): that record alone is dropped, and LitServe still
    logs it with this message (else the filter would silently stop working)."""
    import logging

    import litserve.server

    from mnist_lightning.serve.server import ManagerGoneAtShutdown

    def record(message: str, error: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            "litserve.server", logging.ERROR, __file__, 1, message, None, (type(error), error, None)
        )

    kept = ManagerGoneAtShutdown().filter
    assert not kept(record(ManagerGoneAtShutdown.MESSAGE, ConnectionResetError(104, "reset")))
    assert not kept(record(ManagerGoneAtShutdown.MESSAGE, EOFError()))
    assert kept(record(ManagerGoneAtShutdown.MESSAGE, ValueError("a real crash")))
    assert kept(record("Worker died", ConnectionResetError(104, "reset")))
    source = Path(litserve.server.__file__).read_text()
    assert f'logger.exception("{ManagerGoneAtShutdown.MESSAGE}")' in source


def test_only_a_request_cancelled_at_shutdown_is_dropped_from_uvicorns_log():
    """uvicorn logs the CancelledError of each request a stop cancels after its graceful timeout
    (serve.server.RequestCancelledAtShutdown): those records alone are dropped, and uvicorn
    still cancels them with that message (else the filter would silently stop working)."""
    import asyncio
    import logging

    import uvicorn.server

    from mnist_lightning.serve.server import RequestCancelledAtShutdown

    def record(error: BaseException) -> logging.LogRecord:
        message = "Exception in ASGI application\n"
        exc_info = (type(error), error, None)
        return logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, message, None, exc_info
        )

    kept = RequestCancelledAtShutdown().filter
    assert not kept(record(asyncio.CancelledError(RequestCancelledAtShutdown.CANCELLED)))
    assert kept(record(asyncio.CancelledError()))
    assert kept(record(RuntimeError(RequestCancelledAtShutdown.CANCELLED)))
    source = Path(uvicorn.server.__file__).read_text()
    assert f't.cancel(msg="{RequestCancelledAtShutdown.CANCELLED}")' in source


def test_only_a_lifespan_cancelled_at_shutdown_is_dropped_from_uvicorns_log():
    """uvicorn logs Starlette's traceback of a lifespan task cancelled as the server stops
    (serve.server.LifespanCancelledAtShutdown): that record alone is dropped, and Starlette and
    uvicorn still report it that way (else the filter would silently stop working)."""
    import asyncio
    import logging
    import traceback

    import starlette.routing
    import uvicorn.lifespan.on

    from mnist_lightning.serve.server import LifespanCancelledAtShutdown

    def lifespan(error: BaseException) -> str:  # the text Starlette sends: format_exc()
        try:
            raise error
        except BaseException:
            return traceback.format_exc()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, None, None)

    kept = LifespanCancelledAtShutdown().filter
    assert not kept(record(lifespan(asyncio.CancelledError())))
    assert kept(record(lifespan(RuntimeError("a real failure in the lifespan"))))
    assert kept(record("Traceback (most recent call last):\n  ... in serve\nCancelledError"))
    assert kept(record("Exception in ASGI application"))
    routing = Path(starlette.routing.__file__).read_text()
    assert '"lifespan.shutdown.failed", "message": exc_text' in routing
    assert "exc_text = traceback.format_exc()" in routing
    assert 'self.logger.error(message["message"])' in Path(uvicorn.lifespan.on.__file__).read_text()


def test_a_client_asking_to_upgrade_to_http2_gets_its_answer(server, digits):
    """curl --http2 on http:// asks to upgrade to HTTP/2 (h2c) in a request with a body: the
    server answers it over HTTP/1.1, body read."""
    body = json.dumps({"pixels": digits[0][0, 0].tolist()}).encode()
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        answer = b""
        while b"digit" not in answer and len(answer) < 100_000:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_base64_with_line_breaks_is_read(server, digits):
    """What `base64` and `base64.encodebytes` write: lines of 76 characters."""
    encoded = base64.encodebytes(png(digits[0][0, 0].numpy())).decode()
    assert "\n" in encoded
    for image in (encoded, "data:image/png;base64," + encoded):
        status, answer = post_json(server, {"image": image})
        assert status == 200 and answer["digit"] in range(10)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["data:", "data:image/png;base64,", "iVBORw0KGgo=", "\n\n"]),
    lambda inner: (
        st.lists(inner, max_size=30) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=40,
)
REQUEST_BODIES = (
    st.binary(max_size=2048)
    | st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES)
    | st.builds(
        lambda key, v: json.dumps({key: v}).encode(),
        st.sampled_from(["image", "pixels"]),
        JSON_VALUES,
    )
    | st.builds(
        lambda rows, value: json.dumps({"pixels": [[value] * 28] * rows}).encode(),
        st.integers(0, 30),
        JSON_VALUES,
    )
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=b",
        "multipart/form-data",
        "text/plain",
        "application/json; charset=utf-32",
        "",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=REQUEST_BODIES, content_type=CONTENT_TYPES)
def test_any_request_is_the_models_answer_or_a_4xx(server, body, content_type):
    headers = [("Content-Type", content_type)] if content_type else []
    status, answer = raw_post(server, body, headers)
    assert status == 200 or 400 <= status < 500, (status, answer)
    if status != 200:
        assert answer["detail"] and "\n" not in answer["detail"]
    else:
        assert answer["digit"] in range(10)
