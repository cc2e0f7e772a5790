"""MNIST digit classification with PyTorch Lightning and Hydra."""

from pathlib import Path

__version__ = "0.1.0"
PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """Where `outputs/` and `data/` go: the checkout that holds the package (beside its
    pyproject.toml), else the folder the command runs in (the package installed from a
    wheel)."""
    checkout = PACKAGE_DIR.parent
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()
