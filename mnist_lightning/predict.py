"""Read digits in real images: `python -m mnist_lightning.predict ckpt_path=... inputs=[...]`.

Each image is made to look like MNIST (see preprocess.py) and classified. One line per image:
file, predicted digit, probability, top 3. A bad file gets its own error line and the rest
still run; the exit code is 1 when any file failed.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig

from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.errors import UserError

log = logging.getLogger("mnist_lightning.predict")


def classify(model, images, normalize: bool, top_k: int = 3) -> list[dict[str, Any]]:
    """Top-k digits and probabilities for uint8 [N,1,28,28] images."""
    import torch

    from mnist_lightning.data.datamodule import to_model_input

    with torch.no_grad():
        probabilities = model(to_model_input(images, normalize)).softmax(dim=1)
    values, digits = probabilities.topk(top_k, dim=1)
    return [
        {
            "digit": int(d[0]),
            "probability": round(float(v[0]), 6),
            "top": [[int(di), round(float(vi), 6)] for di, vi in zip(d, v, strict=True)],
        }
        for d, v in zip(digits, values, strict=True)
    ]


def write_results(results: list[dict[str, Any]], output: Path) -> None:
    import io

    from mnist_lightning.atomic import write_text_atomically

    if output.suffix.lower() == ".json":
        write_text_atomically(output, json.dumps(results, indent=2) + "\n")
        return
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["file", "digit", "probability", "top", "error"])
    for r in results:
        top = " ".join(f"{d}:{p:.4f}" for d, p in r.get("top", []))
        writer.writerow(
            [r["file"], r.get("digit", ""), r.get("probability", ""), top, r.get("error", "")]
        )
    write_text_atomically(output, text.getvalue())


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    import torch

    from mnist_lightning.data import preprocess
    from mnist_lightning.runtime import imported_objects_frozen
    from mnist_lightning.training.checkpoints import load_trained

    inputs = list(cfg.inputs) if isinstance(cfg.inputs, ListConfig | list) else [str(cfg.inputs)]
    output = Path(cfg.output) if cfg.output else None
    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"output={output}: use a .csv or .json file name")
    _, model, settings = load_trained(cfg.ckpt_path)
    normalize = settings.get("normalize", True)
    files, skipped = preprocess.find_images(inputs)
    if skipped:
        log.info("ignored %d non-image file(s) in the folders given", skipped)
    if not files:
        raise UserError(f"no images found in {', '.join(inputs)}")

    results, digits = [], {}
    for path in files:
        try:
            digits[len(results)] = preprocess.to_mnist(preprocess.load_image(path))
            results.append({"file": str(path)})
        except preprocess.ImageError as error:
            message = str(error).removeprefix(f"{path}: ")
            results.append({"file": str(path), "error": message})
    if digits:
        with imported_objects_frozen():  # and the exit is 1 s shorter
            batch = torch.stack(list(digits.values()))
            answers = classify(model, batch, normalize, cfg.top_k)
        for index, answer in zip(digits, answers, strict=True):
            results[index].update(answer)

    run_dir = Path(cfg.paths.output_dir)
    if cfg.save_preprocessed and digits:
        from PIL import Image

        folder = run_dir / "preprocessed"
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in digits.items():
            name = f"{index:04d}_{Path(results[index]['file']).stem}.png"
            Image.fromarray(image[0].numpy(), mode="L").save(folder / name)
            results[index]["preprocessed"] = str(folder / name)

    width = max(len(r["file"]) for r in results)
    for r in results:
        if "error" in r:
            log.info("%-*s  error: %s", width, r["file"], r["error"])
        else:
            top = ", ".join(f"{d} {p:.3f}" for d, p in r["top"])
            log.info(
                "%-*s  digit %d  p=%.3f  top %d: %s",
                width,
                r["file"],
                r["digit"],
                r["probability"],
                cfg.top_k,
                top,
            )
    failed = sum("error" in r for r in results)
    log.info(
        "%d image(s), %d failed%s",
        len(results),
        failed,
        f"; 28x28 inputs in {run_dir / 'preprocessed'}" if cfg.save_preprocessed and digits else "",
    )
    if output is not None:
        write_results(results, output)
        log.info("results written to %s", output)
    return results


@hydra.main(config_path=CONFIG_DIR, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        results = predict(cfg)
    except UserError as error:
        log.error("error: %s", error)
        sys.exit(1)
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
