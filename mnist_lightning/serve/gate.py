"""The request gate: the ASGI middleware in front of LitServe that serves the drawing page and
reads every POST /predict on its own before the model sees it (doors/requests.py decodes it):
a request can only end in the model's answer or the client's 4xx."""

from __future__ import annotations

import base64
import json
import logging

import anyio
import torch

from mnist_lightning.doors.requests import (
    DIGIT,
    PAGE_PATH,
    PREDICT_PATH,
    BadRequest,
    Limits,
    decode_request,
    headers_named,
)
from mnist_lightning.errors import first_line

log = logging.getLogger(__name__)


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
            if b"100-continue" not in [v.lower() for v in headers_named(scope, b"expect")]:
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


async def _discard_body(receive, at_most: int = 1 << 30) -> None:
    """Read what is left of a refused request's body without keeping it."""
    read, more = 0, True
    while more and read < at_most:
        message = await receive()
        read += len(message.get("body", b""))
        more = message.get("more_body", False) and message["type"] == "http.request"


def _content_length(scope: dict) -> int:
    values = headers_named(scope, b"content-length")
    try:
        return int(values[0]) if values else 0
    except ValueError:
        return 0  # the server itself refuses a malformed length
