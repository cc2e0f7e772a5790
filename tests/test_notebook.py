"""The lesson notebook, run from top to bottom in a real Jupyter kernel."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "lesson.ipynb"


def run_notebook(data_dir: Path, monkeypatch, tmp_path: Path) -> nbformat.NotebookNode:
    monkeypatch.setenv("MNIST_DATA_DIR", str(data_dir))  # the kernel inherits the environment
    monkeypatch.setenv("LESSON_QUICK", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel over local sockets (IPC), not over TCP on 127.0.0.1.
    kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    client = NotebookClient(
        notebook, km=kernel, timeout=300, resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # any cell's error fails here, with the cell and its traceback
    return notebook


def text_of(cell) -> str:
    return "".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs
    )


def check(notebook: nbformat.NotebookNode) -> None:
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    outputs = [text_of(c) for c in cells]
    autograd = next(
        o for c, o in zip(cells, outputs, strict=True) if "out.backward()\n" in c.source
    )
    assert "tensor([[4.5000, 4.5000],\n        [4.5000, 4.5000]])" in autograd  # the lesson's
    twice = next(o for c, o in zip(cells, outputs, strict=True) if "retain_graph=True" in c.source)
    assert "tensor([[9., 9.],\n        [9., 9.]])" in twice
    assert any("136,074 parameters" in o for o in outputs)
    assert any("shape of x [n, c, h, w]: [64, 1, 28, 28] torch.float32" in o for o in outputs)
    assert any("shape of y: [64] torch.int64" in o for o in outputs)
    assert any(o.startswith("Accuracy: ") for o in outputs)
    assert any("relu + Adam: test/acc" in o for o in outputs)
    images = [o for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the 3x3 grid and the predictions, nothing more


def test_the_lesson_notebook_runs_on_the_stand_in_files(fixture_data_dir, monkeypatch, tmp_path):
    check(run_notebook(fixture_data_dir, monkeypatch, tmp_path))


def test_the_lesson_notebook_runs_on_real_mnist(real_data_dir, monkeypatch, tmp_path):
    check(run_notebook(real_data_dir, monkeypatch, tmp_path))


def test_the_committed_notebook_carries_a_real_run_and_stays_small():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.outputs or not c.source.strip() for c in code[1:])  # every cell ran
    assert all(o.get("output_type") != "error" for c in code for o in c.outputs)
    assert NOTEBOOK.stat().st_size < 150_000
    accuracy = next(text_of(c) for c in code if "Accuracy: " in text_of(c))
    assert float(accuracy.split("Accuracy: ")[1].split("%")[0]) > 85  # one real epoch, not QUICK
    assert os.sep + "tmp" not in NOTEBOOK.read_text()  # no path of the machine that ran it
