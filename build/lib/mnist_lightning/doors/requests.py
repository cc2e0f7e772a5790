"""The request door: `RequestGate`, the ASGI middleware that reads every POST /predict before
the model sees it, in the HTTP server process.

Every request is read, decoded and checked on its own, before it can join a batch: LitServe
answers every request of a batch with the error of any one of them, so a batch must hold only
requests that decoded. What the gate passes on to the model is the 28x28 digit alone.

By construction, a request can only end in the model's answer or the client's 4xx: any failure
while reading or decoding it, whatever its exception, is answered with a 4xx and a one-line
reason (and an unforeseen one is logged for us). The body is bounded as it streams in; parsing
and decoding run in worker threads, two at a time and within a time budget, so that no request
holds up the event loop and what decoding allocates stays bounded (doors/images.py).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import string
import urllib.parse
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
import torch
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from mnist_lightning.data import IMAGE_SIZE
from mnist_lightning.doors import images
from mnist_lightning.errors import ImageError, ImageTooLarge, NotAnImage, first_line

log = logging.getLogger(__name__)

USAGE = (
    'send an image file (multipart field "file"), {"image": "<base64 PNG or JPEG>"} or '
    '{"pixels": <28 rows of 28 numbers 0-255, white ink on black>}'
)
DIGIT = "digit"  # the one field of what the gate passes on: the 28x28 digit, base64 of 784 bytes
PAGE_PATH, PREDICT_PATH = "/", "/predict"
FORM_FIELDS = 4  # a form holds the image and at most a few other fields
# Requests decoded at the same time: each may allocate up to its decode budget.
DECODERS = anyio.CapacityLimiter(2)
DECODE_SECONDS = 10.0  # a request whose body takes longer to parse and decode is refused


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

_WHITESPACE = str.maketrans("", "", string.whitespace)


def _image_bytes(value: Any) -> bytes:
    """The bytes of a base64 image, or of a data URL (`data:image/png;base64,...`). Line breaks
    are allowed, as `base64` and `base64.encodebytes` write them."""
    if not isinstance(value, str) or not value:
        raise BadRequest(422, f'"image" must be a non-empty base64 string; {USAGE}')
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadRequest(422, '"image" is a data URL without base64 data (data:...;base64,...)')
    try:
        return base64.b64decode(value.translate(_WHITESPACE), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(422, '"image" is not valid base64') from None


def _pixels(value: Any) -> torch.Tensor:
    rows_ok = isinstance(value, list) and len(value) == IMAGE_SIZE
    if not rows_ok or not all(isinstance(r, list) and len(r) == IMAGE_SIZE for r in value):
        raise BadRequest(422, f'"pixels" must be {IMAGE_SIZE} rows of {IMAGE_SIZE} numbers')
    flat = [v for row in value for v in row]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise BadRequest(422, '"pixels" must hold numbers only')
    # Compared as Python numbers first: an integer of 400 digits is no float.
    if not all(0 <= v <= 255 for v in flat):  # (NaN too)
        raise BadRequest(422, '"pixels" must lie between 0 and 255')
    array = np.asarray(flat, dtype=np.float64)
    return torch.from_numpy(np.rint(array).astype(np.uint8).reshape(1, IMAGE_SIZE, IMAGE_SIZE))


def image_digit(data: bytes, name: str, limits: Limits) -> torch.Tensor:
    """An uploaded image as the digit the model sees (predict's preprocessing), refused from
    its header when it would cost more than `limits` to decode."""
    try:
        image = images.decode_image(
            data, name, max_side=limits.max_side, max_decoded_bytes=limits.max_decoded_bytes
        )
        return images.image_to_digit(image, name)
    except ImageTooLarge as error:
        raise BadRequest(413, str(error)) from None
    except NotAnImage as error:
        raise BadRequest(415, str(error)) from None
    except ImageError as error:
        raise BadRequest(422, str(error)) from None


def _json_digit(body: bytes, limits: Limits) -> torch.Tensor:
    try:
        payload = json.loads(body)
    except RecursionError:
        raise BadRequest(400, "the JSON body is nested too deeply; " + USAGE) from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, f"the body is not JSON or a multipart upload; {USAGE}") from None
    if isinstance(payload, dict) and "pixels" in payload:
        return _pixels(payload["pixels"])
    if not isinstance(payload, dict) or "image" not in payload:
        raise BadRequest(422, USAGE)
    return image_digit(_image_bytes(payload["image"]), "image", limits)


def _urlencoded_digit(body: bytes, limits: Limits) -> torch.Tensor:
    """A urlencoded form's `image` field. The standard library's parser counts the fields
    before it parses any (Starlette's parses character by character in Python, with no bound
    on empty fields)."""
    try:
        fields = urllib.parse.parse_qs(
            body.decode("latin-1"), max_num_fields=FORM_FIELDS, strict_parsing=False
        )
    except ValueError as error:
        raise BadRequest(400, f"the form cannot be read ({error}); {USAGE}") from None
    image = fields.get("image", [None])[0]
    if image is None:
        raise BadRequest(422, f"no file in the form; {USAGE}")
    return image_digit(_image_bytes(image), "image", limits)


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
    return media.decode("latin-1").lower(), params


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


async def _multipart_upload(scope: dict, body: bytes, limits: Limits) -> tuple[bytes, str]:
    """A multipart form's file (or its `image` field), parsed by Starlette with limits: one
    file, a few fields."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, receive).form(
            max_files=1, max_fields=FORM_FIELDS, max_part_size=limits.max_bytes
        )
    except (MultiPartException, StarletteHTTPException) as error:
        detail = getattr(error, "message", None) or getattr(error, "detail", None) or str(error)
        raise BadRequest(400, f"the form cannot be read ({detail}); {USAGE}") from None
    upload = form.get("file")
    upload = upload if isinstance(upload, UploadFile) else None
    upload = upload or next((v for _, v in form.multi_items() if isinstance(v, UploadFile)), None)
    if upload is not None:
        return await upload.read(), _upload_name(upload)
    if isinstance(form.get("image"), str):
        return _image_bytes(form.get("image")), "image"
    raise BadRequest(422, f"no file in the form; {USAGE}")


async def decode_request(scope: dict, body: bytes, limits: Limits) -> torch.Tensor:
    """A request's body as the uint8 [1, 28, 28] digit, or BadRequest. Parsing and decoding run
    in a worker thread (DECODERS at a time, within DECODE_SECONDS)."""
    if not body:
        raise BadRequest(400, f"empty request; {USAGE}")
    media, _ = _content_type(scope)
    if media in ("", "application/json"):
        work = functools.partial(_json_digit, body, limits)
    elif media == "application/x-www-form-urlencoded":
        work = functools.partial(_urlencoded_digit, body, limits)
    elif media == "multipart/form-data":
        data, name = await _multipart_upload(scope, body, limits)
        work = functools.partial(image_digit, data, name, limits)
    else:
        raise BadRequest(415, f"Content-Type {media} is not JSON or a form; {USAGE}")
    with anyio.move_on_after(DECODE_SECONDS) as budget:
        return await anyio.to_thread.run_sync(work, limiter=DECODERS, abandon_on_cancel=True)
    assert budget.cancelled_caught
    raise BadRequest(
        413, f"the request took over {DECODE_SECONDS:g} s to decode; send a smaller image"
    )


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
        try:
            digit = await self.read(scope, receive, send)
        except BadRequest as error:
            await self.refuse(send, error.status, error.detail)
            return
        except Exception as error:  # noqa: BLE001 - whatever the client's bytes break is theirs
            log.exception("a request could not be read")
            await self.refuse(send, 400, f"the request cannot be read ({first_line(error)[:160]})")
            return
        if digit is None:  # the client went away
            return
        await self.pass_on(scope, receive, send, digit)

    async def read(self, scope, receive, send) -> torch.Tensor | None:
        """The request's digit; None when the client went away; BadRequest for anything else."""
        limit = self.limits.max_bytes / 1e6
        too_large = f"the request is over {limit:g} MB; send a smaller image"
        if _content_length(scope) > self.limits.max_bytes:  # refused before storing any of it
            # A client that sends at once must be let finish, or it could not read the answer; one
            # that sent `Expect: 100-continue` (curl, for big uploads) sends nothing until told to.
            if b"100-continue" not in [v.lower() for v in _headers(scope, b"expect")]:
                await _discard_body(receive)
            raise BadRequest(413, too_large)
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limits.max_bytes:  # a body of no stated length, too long
                await _discard_body(receive)
                raise BadRequest(413, too_large)
        return await decode_request(scope, bytes(body), self.limits)

    async def pass_on(self, scope, receive, send, digit: torch.Tensor) -> None:
        """The app (LitServe) gets the digit alone, as JSON."""
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
