"""The notebook runs top to bottom in a Jupyter kernel (a few steps only)."""
import os

import nbformat
from nbclient import NotebookClient

from tests.conftest import ROOT


def test_notebook_runs_and_reports_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_NOTEBOOK_STEPS", "6")
    nb = nbformat.read(ROOT / "notebooks" / "train_lenet.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "test accuracy after 6 steps:" in text
    assert "loaded model agrees: True" in text
    assert "ResNet-8 test accuracy after 6 steps:" in text
    assert "total parameters: 2,698 (untrained state included)" in text and "own network: 6 steps" in text
    rel = float(text.split("largest relative gradient difference ")[1].split()[0])
    assert rel < 1e-4
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the training curve, the digits, the confusion matrix
    assert os.environ["MNIST_NOTEBOOK_STEPS"] == "6"
