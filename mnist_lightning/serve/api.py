"""The model behind `python -m mnist_lightning.serve`: LitServe's LitAPI for the digit model.

Every request is read, decoded and checked on its own by the request gate (doors/requests.py)
before it can join a batch; what the gate passes on is the 28x28 digit alone, and `DigitAPI`
only classifies batches of digits.
"""

from __future__ import annotations

import base64
import io
import logging
import signal
from typing import Any

import litserve as ls
import torch
from PIL import Image

from mnist_lightning.command import freeze_imported_objects
from mnist_lightning.data import IMAGE_SIZE
from mnist_lightning.doors.checkpoints import Trained
from mnist_lightning.doors.requests import DIGIT
from mnist_lightning.predict import answer, probabilities

log = logging.getLogger(__name__)

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
        self.dataset = self.trained.dataset
        freeze_imported_objects()

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
        found = probabilities(self.model, batch.to(self.device), self.normalize, self.dataset)
        found = found.cpu()
        answers = list(zip(found, batch.cpu(), strict=True))
        return answers if digits.dim() == 4 else answers[0]

    def unbatch(self, output):
        return output  # predict already answers per digit

    def encode_response(self, output) -> dict[str, Any]:
        ten, digit = output  # the ten probabilities, the 28x28 the model saw
        return {**answer(ten, dataset=self.dataset), "preprocessed": png_base64(digit)}
