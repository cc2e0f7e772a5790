"""The HTTP API behind `python -m mnist_lightning.serve`: LitServe's LitAPI for the digit model,
the request decoding it shares with `predict`, and a guard for bad request bodies.

Kept apart from the entry point so that LitServe is imported only where it is used, and so
that LitServe's worker processes can import `DigitAPI` by name.
"""

from __future__ import annotations

import base64
import binascii
import gc
import io
import json
from typing import Any

import litserve as ls
import numpy as np
import torch
from fastapi import HTTPException

from mnist_lightning.data.mnist_files import IMAGE_SIZE
from mnist_lightning.errors import ImageError, ImageTooLarge, NotAnImage

USAGE = (
    'send an image file (multipart field "file"), {"image": "<base64 PNG or JPEG>"} or '
    '{"pixels": <28 rows of 28 numbers 0-255, white ink on black>}'
)


class BadRequest(Exception):
    """A request the API cannot use: its HTTP status and a one-line reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


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


def decode_digit(request: Any, max_side: int) -> torch.Tensor:
    """A request as the 28x28 uint8 [1, 28, 28] digit the model sees (predict's preprocessing)."""
    from mnist_lightning.data import preprocess

    if isinstance(request, dict) and "pixels" in request:
        return _pixels(request["pixels"])
    if isinstance(request, dict) and "image" in request:
        data, name = _image_bytes(request["image"]), "image"
    elif hasattr(request, "getlist"):  # a multipart form
        upload = request.get("file") or next(
            (v for _, v in request.multi_items() if hasattr(v, "read")), None
        )
        if upload is None or not hasattr(upload, "file"):
            raise BadRequest(422, f"no file in the form; {USAGE}")
        data, name = upload.file.read(), upload.filename or "the upload"
    else:
        raise BadRequest(422, USAGE)
    try:
        return preprocess.to_mnist(preprocess.decode_image(data, name, max_side=max_side))
    except ImageTooLarge as error:
        raise BadRequest(413, str(error)) from None
    except NotAnImage as error:
        raise BadRequest(415, str(error)) from None
    except ImageError as error:
        raise BadRequest(422, str(error)) from None


def png_base64(digit: torch.Tensor) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(digit[0].numpy(), mode="L").save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


def answer(probabilities: torch.Tensor, digit: torch.Tensor) -> dict[str, Any]:
    values, digits = probabilities.topk(3)
    return {
        "digit": int(digits[0]),
        "probabilities": [round(float(p), 6) for p in probabilities],
        "top3": [[int(d), round(float(p), 6)] for d, p in zip(digits, values, strict=True)],
        "preprocessed": png_base64(digit),
    }


class DigitAPI(ls.LitAPI):
    """The model behind POST /predict: decode a request into a 28x28 digit, classify a batch
    of them, answer each as JSON."""

    def __init__(
        self, ckpt_path: str, max_side: int, net_target: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.ckpt_path, self.max_side, self.net_target = ckpt_path, max_side, net_target

    def setup(self, device: str) -> None:
        from mnist_lightning.training.checkpoints import load_trained

        # One CPU thread: this small network gains nothing from more, and the HTTP server and
        # the other workers need the remaining cores.
        torch.set_num_threads(1)

        trained = load_trained(self.ckpt_path, self.net_target)
        self.model = trained.model.to(device).eval()
        self.device = device
        self.normalize = trained.data.get("normalize", True)
        # Torch and the rest leave ~500,000 objects that a full garbage collection would walk
        # (a pause of ~0.4 s, in the middle of answering): they live as long as the worker.
        gc.freeze()

    def decode_request(self, request) -> torch.Tensor:
        try:
            return decode_digit(request, self.max_side)
        except BadRequest as error:
            raise HTTPException(status_code=error.status, detail=error.detail) from None

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, digits: torch.Tensor):
        from mnist_lightning.data.datamodule import to_model_input

        batch = digits if digits.dim() == 4 else digits[None]
        with torch.inference_mode():
            x = to_model_input(batch.to(self.device), self.normalize)
            probabilities = self.model(x).softmax(dim=1).cpu()
        answers = list(zip(probabilities, batch.cpu(), strict=True))
        return answers if digits.dim() == 4 else answers[0]

    def unbatch(self, output):
        return output  # predict already answers per digit

    def encode_response(self, output) -> dict[str, Any]:
        return answer(*output)


class RequestCheck:
    """ASGI middleware for POST /predict: a body over the size limit (refused as it streams
    in, before anything decodes it), an empty body or JSON that does not parse get a 4xx
    and a one-line JSON reason, instead of LitServe's 500."""

    def __init__(self, app, max_bytes: int, path: str = "/predict") -> None:
        self.app, self.max_bytes, self.path = app, max_bytes, path

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                limit = self.max_bytes // 1_000_000
                await _reject(send, 413, f"the request is over {limit} MB; send a smaller image")
                return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if not body:
            await _reject(send, 400, f"empty request; {USAGE}")
            return
        if not content_type.startswith(
            ("multipart/form-data", "application/x-www-form-urlencoded")
        ):
            try:
                json.loads(body)
            except ValueError:
                await _reject(send, 400, f"the body is not JSON or a multipart upload; {USAGE}")
                return

        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def _reject(send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
