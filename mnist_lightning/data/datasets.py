"""The MNIST family: datasets of MNIST's format (four IDX files, 28x28 grey images, ten
classes), each described by a config file of conf/data/ (`dataset:`): its files with their
MD5s and sizes, its mirrors, its class names, its pixel mean and deviation, and how a user's
image is framed to look like its own (a digit centred by mass, or a product that fills the
frame). MNIST is the default; `data=fashion_mnist` is Zalando's Fashion-MNIST.

A checkpoint keeps what the network needs to be used (`public`: the name, the classes, the
normalisation, the framing), never where the files come from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class IdxDataset:
    name: str  # the name its config and checkpoints go by (mnist, fashion_mnist)
    folder: str  # <data_dir>/<folder>/raw/ holds its files, as torchvision lays them out
    files: dict[str, dict[str, Any]]  # role -> {file, md5 (of the uncompressed file), items}
    classes: tuple[str, ...]
    mean: float  # of the training images' pixels in [0, 1]
    std: float
    framing: Literal["digit", "product"] = "digit"
    mirrors: tuple[str, ...] = field(default=())  # where `<file>.gz` is downloaded from

    @classmethod
    def of(cls, settings: Any) -> IdxDataset:
        """A dataset from its settings (a config's `dataset:`, a checkpoint's), MNIST for None."""
        if not settings:
            return MNIST
        values = dict(settings)
        values["classes"] = tuple(values.get("classes") or ())
        values["mirrors"] = tuple(values.get("mirrors") or ())
        values.setdefault("files", MNIST.files)  # (a checkpoint's: files and folder not kept)
        values.setdefault("folder", MNIST.folder)
        values["files"] = {role: dict(entry) for role, entry in dict(values["files"]).items()}
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """What a checkpoint keeps: enough to use the network, nothing of where the files are."""
        kept = {k: v for k, v in asdict(self).items() if k not in ("files", "mirrors", "folder")}
        return {**kept, "classes": list(self.classes)}  # plain data: a list, as configs have it

    def file(self, role: str) -> str:
        return self.files[role]["file"]

    @property
    def is_mnist(self) -> bool:
        return self.name == "mnist"


def _files(md5s: tuple[str, str, str, str]) -> dict[str, dict[str, Any]]:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    names += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    items = (60_000, 60_000, 10_000, 10_000)
    return {
        role: {"file": name, "md5": md5, "items": n}
        for role, name, md5, n in zip(ROLES, names, md5s, items, strict=True)
    }


# MNIST's files: the MD5 of each uncompressed file (torchvision knows only the .gz's).
MNIST = IdxDataset(
    name="mnist",
    folder="MNIST",
    files=_files(
        (
            "6bbc9ace898e44ae57da46a324031adb",
            "a25bea736e30d166cdddb491f175f624",
            "2646ac647ad5339dbf082846283269ea",
            "27ae3e4e09519cfbb04c329615203637",
        )
    ),
    classes=tuple(str(d) for d in range(10)),
    mean=0.1307,
    std=0.3081,
    # torchvision's MNIST.mirrors, written out: importing torchvision takes 1.5 s, which predict,
    # export and serve would pay at every start (a test keeps the two lists the same).
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
)
