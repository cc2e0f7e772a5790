"""Draw a digit in the browser: `python -m mnist_lightning.serve ckpt_path=<run folder or .ckpt>`.

A LitServe server around a trained checkpoint. `POST /predict` takes an image file (multipart),
`{"image": "<base64 PNG/JPEG>"}` or `{"pixels": <28x28 numbers 0-255, white ink on black>}`,
preprocesses it with `predict`'s own code, and answers the digit, the ten probabilities, the top
3 and the 28x28 the model saw; concurrent requests are answered in batches. `GET /` is a page to
draw on; `GET /health` answers probes. Ctrl-C or SIGTERM stops every process of the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import socket
from importlib import resources

import hydra
import litserve as ls
from omegaconf import DictConfig

from mnist_lightning.command import command, freeze_imported_objects
from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.data.datasets import MNIST, IdxDataset
from mnist_lightning.doors.checkpoints import load_trained
from mnist_lightning.doors.requests import Limits
from mnist_lightning.errors import ConfigError, UserError
from mnist_lightning.serve.api import DigitAPI
from mnist_lightning.serve.gate import RequestGate
from mnist_lightning.settings import ServeOptions, accelerator_problem, command_options

log = logging.getLogger("mnist_lightning.serve")
GRACEFUL_STOP_SECONDS = 3


MNIST_CLASSES = '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]'


def page(dataset: IdxDataset = MNIST) -> str:
    """The drawing page, from the package (no file outside it is ever served), with the served
    model's class names (typed on the way in: no markup or quote can be among them)."""
    text = resources.files("mnist_lightning.serve").joinpath("draw.html").read_text()
    if dataset.is_mnist:
        return text
    title = "Draw or upload an image" if dataset.framing == "product" else "Draw a digit"
    text = text.replace("<h1>Draw a digit</h1>", f"<h1>{title}</h1>")
    return text.replace(
        f"const CLASSES = {MNIST_CLASSES};", f"const CLASSES = {json.dumps(dataset.classes)};"
    )


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the server will: connections of a server just stopped do not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(
                f"cannot listen on {host}:{port} ({error.strerror}); stop what uses it or choose "
                "another with port=<number>"
            ) from None


def build_server(options: ServeOptions) -> ls.LitServer:
    """The LitServe server: the model read once from its checkpoint (a missing, foreign or
    unsafe one stops here, in one line, as does an accelerator this machine lacks), behind the
    request gate."""
    if problem := accelerator_problem("accelerator", options.accelerator):
        raise ConfigError(problem)
    trained = load_trained(options.ckpt_path, options.net_target)
    log.info("serving %s", trained.checkpoint)
    api = DigitAPI(
        trained, max_batch_size=options.max_batch_size, batch_timeout=options.batch_timeout
    )
    limits = Limits(
        max_bytes=int(options.max_upload_mb * 1_000_000),
        max_side=options.max_side,
        max_decoded_bytes=options.max_decode_mb * 1_000_000,
        refusal_delay=options.refusal_delay,
        framing=trained.dataset.framing,
    )
    server = ls.LitServer(
        api,
        accelerator=options.accelerator,
        workers_per_device=options.workers,
        middlewares=[(RequestGate, {"limits": limits, "page": page(trained.dataset)})],
        disable_openapi_url=True,  # its page loads scripts from a CDN
    )
    # How long a stop waits for requests in flight (LitServe's default, 30 s, outlasts the 10 s
    # that Docker and Kubernetes give a process after SIGTERM).
    server.uvicorn_graceful_timeout = GRACEFUL_STOP_SECONDS
    return server


class ManagerGoneAtShutdown(logging.Filter):
    """Drops the one traceback LitServe logs when it stops normally.

    LitServe (0.2.19) stops on Ctrl-C by shutting down its multiprocessing manager without
    setting the shutdown event its worker monitor polls (every 2 s) through that manager; a poll
    after that finds the manager gone and logs "Monitoring worker crashed" with a traceback, on
    some stops and not others. No public setting avoids it; tests/test_serve.py fails if
    LitServe's message changes."""

    MESSAGE = "Monitoring worker crashed"

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.msg == self.MESSAGE and isinstance(error, OSError | EOFError))


class LifespanCancelledAtShutdown(logging.Filter):
    """Drops the traceback uvicorn logs when a stop cancels its lifespan task.

    On Ctrl-C, the HTTP server processes stop on their own signal and LitServe stops them too.
    On some stops the process's event loop ends before its lifespan task is sent the shutdown
    message: Starlette reports the task's CancelledError as a failed shutdown, and uvicorn logs
    that traceback as an error, though the server stopped normally (exit code 0, the port
    freed). tests/test_serve.py fails if Starlette or uvicorn change how it is reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cancelled = message.rstrip().endswith("CancelledError") and ", in lifespan\n" in message
        return not (message.startswith("Traceback") and cancelled)


class RequestCancelledAtShutdown(logging.Filter):
    """Drops the traceback uvicorn logs for each request a stop cancels.

    A client that stalls in the middle of its upload keeps its request waiting; when the graceful
    timeout ends, uvicorn logs "Cancel N running task(s)" (kept) and cancels them, then logs each
    one's CancelledError as "Exception in ASGI application" with a traceback, though that is how
    a stop must end them. tests/test_serve.py fails if uvicorn's message changes."""

    CANCELLED = "Task cancelled, timeout graceful shutdown exceeded"

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, asyncio.CancelledError) and self.CANCELLED in error.args)


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (systemd, Docker, Kubernetes) stop the server the one way LitServe
    shuts down all its processes: a KeyboardInterrupt in the serve command's own process.

    Ctrl-C reaches every process of the server; SIGTERM is passed on to them as Ctrl-C, so
    that they stop together. LitServe's HTTP server processes are forked
    from this one with this handler; uvicorn raises the signal again after its own graceful
    stop, and there the handler does nothing: the serve command stops them, without a
    traceback. (The model's worker ignores Ctrl-C: DigitAPI.setup.)"""
    serve_command = os.getpid()

    def stop(signum, frame) -> None:
        if os.getpid() != serve_command:
            return
        if signum == signal.SIGTERM:
            # SIGTERM reaches this process alone. LitServe stops its HTTP servers one after
            # another, each waiting for its clients up to the graceful timeout: sent Ctrl-C's
            # SIGINT at once, they wait together, and the stop takes one timeout, not one each.
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGINT)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


@hydra.main(config_path=CONFIG_DIR, config_name="serve", version_base="1.3")
@command
def main(cfg: DictConfig) -> None:
    options: ServeOptions = command_options(ServeOptions, cfg)
    check_port(options.host, options.port)
    server = build_server(options)
    log.info("on http://%s:%d/ (draw there; POST /predict)", options.host, options.port)
    stop_on_signals()
    logging.getLogger("litserve.server").addFilter(ManagerGoneAtShutdown())
    logging.getLogger("uvicorn.error").addFilter(LifespanCancelledAtShutdown())
    logging.getLogger("uvicorn.error").addFilter(RequestCancelledAtShutdown())
    freeze_imported_objects()  # the HTTP server processes start from here
    server.run(
        host=options.host,
        port=options.port,
        num_api_servers=options.api_servers,
        generate_client_file=False,
        log_level=options.log_level,
        # h11 reads the body of a request that asks to upgrade to HTTP/2 (curl --http2) and
        # answers it over HTTP/1.1; uvicorn's httptools parser drops that body.
        http="h11",
    )
    log.info("stopped")


if __name__ == "__main__":
    main()
