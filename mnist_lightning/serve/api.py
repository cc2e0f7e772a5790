"""The HTTP API behind `python -m mnist_lightning.serve`: the request gate, and LitServe's LitAPI
for the digit model.

Every request is read, decoded and checked on its own by `RequestGate`, an ASGI middleware in
the HTTP server process, before it can join a batch: LitServe answers every request of a batch
with the error of any one of them, so a batch must hold only requests that decoded. A bad
request is answered at once with a 4xx and a one-line reason; what the gate passes on to the
model is the 28x28 digit alone, and `DigitAPI` only classifies batches of digits.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gc
import io
import json
import logging
import signal
from dataclasses import dataclass
from typing import Any

import anyio
import litserve as ls
import numpy as np
import torch
from PIL import Image
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from mnist_lightning.data import IMAGE_SIZE, preprocess
from mnist_lightning.data.datamodule import to_model_input
from mnist_lightning.doors.checkpoints import Trained
from mnist_lightning.errors import ImageError, ImageTooLarge, NotAnImage
from mnist_lightning.predict import answer

log = logging.getLogger(__name__)

USAGE = (
    'send an image file (multipart field "file"), {"image": "<base64 PNG or JPEG>"} or '
    '{"pixels": <28 rows of 28 numbers 0-255, white ink on black>}'
)
DIGIT = "digit"  # the one field of what the gate passes on: the 28x28 digit, base64 of 784 bytes
PAGE_PATH, PREDICT_PATH = "/", "/predict"


@dataclass(frozen=True)
class Limits:
    """What one request may cost: its body, its image's sides, its image's decoded size; and
    how long a refused request waits for its answer (asleep, at no cost to the server), so that
    a client looping on bad requests cannot take the server's time from the others."""

    max_bytes: int
    max_side: int
    max_decoded_bytes: float
    refusal_delay: float = 0.0


class BadRequest(Exception):
    """A request the API cannot use: its HTTP status and a one-line reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


# --- what a request holds, decoded and checked -----------------------------------------------


def _image_bytes(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise BadRequest(422, f'"image" must be a non-empty base64 string; {USAGE}')
    encoded = value.split(",", 1)[1] if value.startswith("data:") else value  # a data URL
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(422, '"image" is not valid base64') from None


def _pixels(value: Any) -> torch.Tensor:
    rows_ok = isinstance(value, list) and len(value) == IMAGE_SIZE
    if not rows_ok or not all(isinstance(r, list) and len(r) == IMAGE_SIZE for r in value):
        raise BadRequest(422, f'"pixels" must be {IMAGE_SIZE} rows of {IMAGE_SIZE} numbers')
    flat = [v for row in value for v in row]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise BadRequest(422, '"pixels" must hold numbers only')
    array = np.asarray(flat, dtype=np.float64)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise BadRequest(422, '"pixels" must lie between 0 and 255')
    return torch.from_numpy(np.rint(array).astype(np.uint8).reshape(1, IMAGE_SIZE, IMAGE_SIZE))


def image_digit(data: bytes, name: str, limits: Limits) -> torch.Tensor:
    """An uploaded image as the digit the model sees (predict's preprocessing), refused from
    its header when it would cost more than `limits` to decode."""
    try:
        image = preprocess.decode_image(
            data, name, max_side=limits.max_side, max_decoded_bytes=limits.max_decoded_bytes
        )
        return preprocess.image_to_digit(image, name)
    except ImageTooLarge as error:
        raise BadRequest(413, str(error)) from None
    except NotAnImage as error:
        raise BadRequest(415, str(error)) from None
    except ImageError as error:
        raise BadRequest(422, str(error)) from None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequest(400, "the JSON body is nested too deeply; " + USAGE) from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, f"the body is not JSON or a multipart upload; {USAGE}") from None


def _upload_name(upload: UploadFile) -> str:
    name = "".join(c for c in (upload.filename or "") if c.isprintable())[:80]
    return name or "the upload"


def _headers(scope: dict, name: bytes) -> list[bytes]:
    return [v for k, v in scope.get("headers") or [] if k.lower() == name]


def _content_type(scope: dict) -> tuple[str, dict[bytes, bytes]]:
    """The request's one media type, lower case (`multipart/form-data`), and its parameters."""
    values = _headers(scope, b"content-type")
    if len(values) > 1:
        raise BadRequest(400, "the request has more than one Content-Type header; send one")
    media, params = parse_options_header(values[0] if values else b"")
    return media.decode("latin-1"), params


async def _discard_body(receive, at_most: int = 1 << 30) -> None:
    """Read what is left of a refused request's body without keeping it."""
    read, more = 0, True
    while more and read < at_most:
        message = await receive()
        read += len(message.get("body", b""))
        more = message.get("more_body", False) and message["type"] == "http.request"


def _content_length(scope: dict) -> int:
    values = _headers(scope, b"content-length")
    try:
        return int(values[0]) if values else 0
    except ValueError:
        return 0  # the server itself refuses a malformed length


async def _form(scope: dict, body: bytes, limits: Limits):
    """A multipart or urlencoded form, parsed by Starlette with limits: one file, a few fields."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(scope, receive).form(
            max_files=1, max_fields=4, max_part_size=limits.max_bytes
        )
    except (MultiPartException, StarletteHTTPException) as error:
        detail = getattr(error, "message", None) or getattr(error, "detail", None) or str(error)
        raise BadRequest(400, f"the form cannot be read ({detail}); {USAGE}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(400, f"the form cannot be read ({error}); {USAGE}") from None


async def decode_request(scope: dict, body: bytes, limits: Limits) -> torch.Tensor:
    """A request's body as the uint8 [1, 28, 28] digit, or BadRequest. An image is decoded in
    a worker thread, so that the HTTP server goes on answering while it decodes."""
    if not body:
        raise BadRequest(400, f"empty request; {USAGE}")
    media, _ = _content_type(scope)
    if media in ("", "application/json"):
        payload = _json(body)
        if isinstance(payload, dict) and "pixels" in payload:
            return _pixels(payload["pixels"])
        if not isinstance(payload, dict) or "image" not in payload:
            raise BadRequest(422, USAGE)
        data, name = _image_bytes(payload["image"]), "image"
    elif media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await _form(scope, body, limits)
        upload = form.get("file")
        upload = upload if isinstance(upload, UploadFile) else None
        upload = upload or next(
            (v for _, v in form.multi_items() if isinstance(v, UploadFile)), None
        )
        if upload is not None:
            data, name = await upload.read(), _upload_name(upload)
        elif isinstance(form.get("image"), str):
            data, name = _image_bytes(form.get("image")), "image"
        else:
            raise BadRequest(422, f"no file in the form; {USAGE}")
    else:
        raise BadRequest(415, f"Content-Type {media} is not JSON or a form; {USAGE}")
    return await anyio.to_thread.run_sync(functools.partial(image_digit, data, name, limits))


# --- the gate ---------------------------------------------------------------------------------


class RequestGate:
    """ASGI middleware: serves the drawing page at GET /, and reads, decodes and checks every
    POST /predict on its own (see the module's docstring). A body over `limits.max_bytes` is
    refused as it streams in, before anything decodes it."""

    def __init__(self, app, limits: Limits, page: str) -> None:
        self.app, self.limits = app, limits
        self.page = page.encode()

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else None
        if path == PAGE_PATH and scope["method"] in ("GET", "HEAD"):
            await _respond(send, 200, self.page, b"text/html; charset=utf-8")
            return
        if path is None or path.rstrip("/") != PREDICT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_bytes / 1e6
        too_large = f"the request is over {limit:g} MB; send a smaller image"
        if _content_length(scope) > self.limits.max_bytes:  # refused before storing any of it
            # A client that sends at once must be let finish, or it could not read the answer; one
            # that sent `Expect: 100-continue` (curl, for big uploads) sends nothing until told to.
            if b"100-continue" not in [v.lower() for v in _headers(scope, b"expect")]:
                await _discard_body(receive)
            await self.refuse(send, 413, too_large)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limits.max_bytes:  # a body of no stated length, too long
                await _discard_body(receive)
                await self.refuse(send, 413, too_large)
                return
        try:
            digit = await decode_request(scope, bytes(body), self.limits)
        except BadRequest as error:
            await self.refuse(send, error.status, error.detail)
            return
        passed_on = json.dumps({DIGIT: base64.b64encode(digit.numpy().tobytes()).decode()})
        payload = passed_on.encode()
        headers = [
            (k, v)
            for k, v in scope.get("headers") or []
            if k not in (b"content-type", b"content-length")
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    async def refuse(self, send, status: int, detail: str) -> None:
        await anyio.sleep(self.limits.refusal_delay)
        await _respond(send, status, json.dumps({"detail": detail}).encode(), b"application/json")


async def _respond(send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- the model --------------------------------------------------------------------------------


def png_base64(digit: torch.Tensor) -> str:
    buffer = io.BytesIO()
    Image.fromarray(digit[0].numpy(), mode="L").save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


class DigitAPI(ls.LitAPI):
    """The model behind POST /predict: classify a batch of the gate's 28x28 digits, answer each
    as JSON. The trained model comes with it from the serve command, which read its checkpoint
    once."""

    def __init__(self, trained: Trained, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trained = trained

    def setup(self, device: str) -> None:
        # Ctrl-C reaches every process of the server; the serve command stops this one.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # One CPU thread: this small network gains nothing from more, and the HTTP server and
        # the other workers need the remaining cores.
        torch.set_num_threads(1)
        self.model = self.trained.model.to(device).eval()
        self.device = device
        self.normalize = self.trained.data.get("normalize", True)
        # Torch and the rest leave ~500,000 objects that a full garbage collection would walk
        # (a pause of ~0.4 s, in the middle of answering): they live as long as the worker.
        gc.freeze()

    def decode_request(self, request: dict) -> torch.Tensor:
        # Only the gate writes these requests (RequestGate): 784 bytes, already checked.
        raw = base64.b64decode(request[DIGIT])
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(
            1, IMAGE_SIZE, IMAGE_SIZE
        )

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, digits: torch.Tensor):
        batch = digits if digits.dim() == 4 else digits[None]
        with torch.inference_mode():
            x = to_model_input(batch.to(self.device), self.normalize)
            probabilities = self.model(x).softmax(dim=1).cpu()
        answers = list(zip(probabilities, batch.cpu(), strict=True))
        return answers if digits.dim() == 4 else answers[0]

    def unbatch(self, output):
        return output  # predict already answers per digit

    def encode_response(self, output) -> dict[str, Any]:
        probabilities, digit = output
        return {**answer(probabilities), "preprocessed": png_base64(digit)}
