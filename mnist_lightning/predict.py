"""Read digits in real images: `python -m mnist_lightning.predict ckpt_path=... inputs=[...]`.

Each image is made to look like MNIST (data/preprocess.py) and classified. One line per image:
file, predicted digit, probability, top k. A bad file gets its own error line and the rest
still run; the exit code is 1 when any file failed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from PIL import Image

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.command import command
from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.data import to_model_input
from mnist_lightning.data.datasets import MNIST, IdxDataset
from mnist_lightning.doors import images
from mnist_lightning.doors.checkpoints import load_trained
from mnist_lightning.errors import ImageError, UserError
from mnist_lightning.folders import refuse_inside_a_run
from mnist_lightning.settings import PredictOptions, command_options

log = logging.getLogger("mnist_lightning.predict")


def answer(
    probabilities: torch.Tensor, top_k: int = 3, dataset: IdxDataset = MNIST
) -> dict[str, Any]:
    """The answer about one image, the same from predict and serve: the class (MNIST: the
    digit), its probability, all ten, and the top k as [class, probability] pairs; for a
    dataset other than MNIST also the class's name."""
    values, classes = probabilities.topk(top_k)
    best = int(classes[0])
    named = {"digit": best} if dataset.is_mnist else {"class": best, "name": dataset.classes[best]}
    return {
        **named,
        "probability": round(float(values[0]), 6),
        "probabilities": [round(float(p), 6) for p in probabilities],
        "top": [[int(d), round(float(p), 6)] for d, p in zip(classes, values, strict=True)],
    }


def probabilities(model, images: torch.Tensor, normalize: bool, dataset=MNIST) -> torch.Tensor:
    """The ten probabilities of each of uint8 [N,1,28,28] images (predict's and serve's)."""
    with torch.inference_mode():
        x = to_model_input(images, normalize, None, dataset.mean, dataset.std)
        return model(x).softmax(dim=1)


def classify(
    model, images: torch.Tensor, normalize: bool, top_k: int = 3, dataset: IdxDataset = MNIST
) -> list[dict[str, Any]]:
    """The answers for uint8 [N,1,28,28] images."""
    return [answer(p, top_k, dataset) for p in probabilities(model, images, normalize, dataset)]


def printable(text: str) -> str:
    """A file name on one line of the console: quoted, with its escapes, if it holds a line
    break or another control character."""
    return json.dumps(text) if any(not c.isprintable() for c in text) else text


def write_results(results: list[dict[str, Any]], output: Path) -> None:
    if output.suffix.lower() == ".json":
        write_text_atomically(output, json.dumps(results, indent=2) + "\n")
        return
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    named = any("name" in r for r in results)  # a dataset other than MNIST: its class names
    first = ["file", "class", "name"] if named else ["file", "digit"]
    writer.writerow([*first, "probability", "top", "error"])
    for r in results:
        top = " ".join(f"{d}:{p:.4f}" for d, p in r.get("top", []))
        found = [r.get("class", ""), r.get("name", "")] if named else [r.get("digit", "")]
        writer.writerow([r["file"], *found, r.get("probability", ""), top, r.get("error", "")])
    write_text_atomically(output, text.getvalue())


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    options: PredictOptions = command_options(PredictOptions, cfg)
    output = None
    if options.output:
        output = refuse_inside_a_run(options.output, "output")
        if output.suffix.lower() not in (".csv", ".json"):
            raise UserError(f"output={options.output}: use a .csv or .json file name")
    run_dir = refuse_inside_a_run(cfg.paths.output_dir, "hydra.run.dir")
    trained = load_trained(options.ckpt_path, options.net_target)
    normalize, dataset = trained.data.get("normalize", True), trained.dataset
    inputs = [options.inputs] if isinstance(options.inputs, str) else list(options.inputs)
    files, skipped = images.find_images(inputs)
    if skipped:
        log.info("ignored %d non-image file(s) in the folders given", skipped)
    if not files:
        raise UserError(f"no images found in {', '.join(inputs)}")

    results, digits = [], {}
    for path in files:  # each file on its own: a bad one costs only its own error line
        name = images.shown_name(path)
        try:
            image = images.load_image(path)
            digits[len(results)] = images.image_to_digit(image, name, dataset.framing)
            results.append({"file": name})
        except ImageError as error:
            results.append({"file": name, "error": str(error).removeprefix(f"{name}: ")})
    if digits:
        batch = torch.stack(list(digits.values()))
        answers = classify(trained.model, batch, normalize, options.top_k, dataset)
        for index, answer in zip(digits, answers, strict=True):
            results[index].update(answer)

    if options.save_preprocessed and digits:
        folder = run_dir / "preprocessed"
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in digits.items():
            name = f"{index:04d}_{Path(results[index]['file']).stem}.png"
            Image.fromarray(image[0].numpy(), mode="L").save(folder / name)
            results[index]["preprocessed"] = str(folder / name)

    shown = {r["file"]: printable(r["file"]) for r in results}
    width = max(len(name) for name in shown.values())
    for r in results:
        if "error" in r:
            outcome = f"error: {printable(r['error'])}"
        else:
            top = ", ".join(f"{dataset.classes[d]} {p:.3f}" for d, p in r["top"])
            best = f"digit {r['digit']}" if "digit" in r else f"{r['class']} {r['name']}"
            outcome = f"{best}  p={r['probability']:.3f}  top {options.top_k}: {top}"
        log.info("%-*s  %s", width, shown[r["file"]], outcome)
    failed = sum("error" in r for r in results)
    saved = f"; 28x28 inputs in {run_dir / 'preprocessed'}" if options.save_preprocessed else ""
    log.info("%d image(s), %d failed%s", len(results), failed, saved if digits else "")
    if output is not None:
        write_results(results, output)
        log.info("results written to %s", output)
    return results


@hydra.main(config_path=CONFIG_DIR, config_name="predict", version_base="1.3")
@command
def main(cfg: DictConfig) -> None:
    results = predict(cfg)
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
