"""Draw a digit in the browser: `python -m mnist_lightning.serve ckpt_path=<run folder or .ckpt>`.

A LitServe API (FastAPI underneath, serve_api.py) around a trained checkpoint. `POST /predict`
takes an image file (multipart), `{"image": "<base64 PNG/JPEG>"}` or `{"pixels": <28x28 numbers
0-255, white ink on black>}`, preprocesses it with `predict`'s own code, and answers the digit,
the ten probabilities, the top 3 and the 28x28 the model saw. Concurrent requests are batched.
`GET /` is a page to draw on; `GET /health` answers probes.
"""

from __future__ import annotations

import gc
import logging
import socket
from importlib import resources

import hydra
from omegaconf import DictConfig

from mnist_lightning.command import command
from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.errors import UserError
from mnist_lightning.schema import ServeOptions, command_options

log = logging.getLogger("mnist_lightning.serve")


def page() -> str:
    """The drawing page, from the package (no file outside it is ever served)."""
    return resources.files("mnist_lightning.serve").joinpath("draw.html").read_text()


def check_port(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(
                f"cannot listen on {host}:{port} ({error.strerror}); stop what uses it or choose "
                "another with port=<number>"
            ) from None


def build_server(cfg: DictConfig):
    try:
        import litserve as ls
        from fastapi.responses import HTMLResponse

        from mnist_lightning.serve.api import DigitAPI, RequestCheck
    except ImportError as error:
        raise UserError(
            f"serving needs the 'serve' extra ({error.name} is missing): pip install -e '.[serve]'"
        ) from None
    from mnist_lightning.training.checkpoints import load_trained

    options: ServeOptions = command_options(ServeOptions, cfg)
    # A missing, foreign or unsafe checkpoint stops here, in one line.
    checkpoint = load_trained(options.ckpt_path, options.net_target).checkpoint
    api = DigitAPI(
        str(checkpoint),
        cfg.max_side,
        net_target=options.net_target,
        max_batch_size=cfg.max_batch_size,
        batch_timeout=cfg.batch_timeout,
    )
    server = ls.LitServer(
        api,
        accelerator=cfg.accelerator,
        workers_per_device=cfg.workers,
        middlewares=[(RequestCheck, {"max_bytes": int(cfg.max_upload_mb * 1_000_000)})],
        disable_openapi_url=True,  # its page loads scripts from a CDN
    )
    html = page()
    # LitServe answers GET / with a placeholder ("litserve running"): the page replaces it.
    server.app.router.routes = [
        r for r in server.app.router.routes if getattr(r, "path", "") != "/"
    ]
    server.app.add_api_route(
        "/", lambda: HTMLResponse(html), methods=["GET"], include_in_schema=False
    )
    return server, checkpoint


@hydra.main(config_path=CONFIG_DIR, config_name="serve", version_base="1.3")
@command
def main(cfg: DictConfig) -> None:
    options: ServeOptions = command_options(ServeOptions, cfg)
    check_port(options.host, options.port)
    server, checkpoint = build_server(cfg)
    log.info(
        "serving %s on http://%s:%d/ (draw there; POST /predict)", checkpoint, cfg.host, cfg.port
    )
    # The HTTP server processes fork from here: as in the model's worker (serve_api.py), no
    # full garbage collection walks the imported objects while requests wait.
    gc.freeze()
    server.run(
        host=cfg.host,
        port=cfg.port,
        num_api_servers=cfg.api_servers,
        generate_client_file=False,
        log_level=cfg.log_level,
    )


if __name__ == "__main__":
    main()
