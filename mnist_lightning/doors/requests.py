"""The request door: what the request gate (serve/gate.py) does with the body of every POST
/predict before the model sees it, in the HTTP server process: `decode_request`.

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
from mnist_lightning.errors import ImageError, ImageTooLarge, NotAnImage

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
    framing: str = "digit"  # how an uploaded image is made the model's (data/preprocess.py)


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
        return images.image_to_digit(image, name, limits.framing)
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


def headers_named(scope: dict, name: bytes) -> list[bytes]:
    return [v for k, v in scope.get("headers") or [] if k.lower() == name]


def _content_type(scope: dict) -> tuple[str, dict[bytes, bytes]]:
    """The request's one media type, lower case (`multipart/form-data`), and its parameters."""
    values = headers_named(scope, b"content-type")
    if len(values) > 1:
        raise BadRequest(400, "the request has more than one Content-Type header; send one")
    media, params = parse_options_header(values[0] if values else b"")
    return media.decode("latin-1").lower(), params


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
