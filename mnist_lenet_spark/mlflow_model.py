"""A trained network as an MLflow model (``mlflow.pyfunc``): the one module of this package that imports mlflow,
imported only when MLflow is asked for (``tracking``), and where a saved model is loaded.

The model holds the weights (``weights.npz``), the network's JSON definition (``network.json``) and the pixel range
it was trained with (``input.json``) as artifacts, and a copy of this package's Python code, so
``mlflow.pyfunc.load_model(uri).predict(x)`` runs in any process with numpy, pandas and mlflow: no Spark, no install
of this package. ``x``: a pandas DataFrame of C*H*W pixel columns (or of one column holding each image's pixels as a
sequence or bytes), or a NumPy array (n, C*H*W) or (n, C, H, W) ((n, H, W) for one channel), read as ``images_of``
reads it. The result is a DataFrame: ``prediction`` (the class) and ``probability_0`` .. ``probability_{K-1}``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

PACKAGE = Path(__file__).resolve().parent


def images_of(model_input, network, pixel_range: str) -> np.ndarray:
    """uint8 (n, C, H, W) pixels of ``model_input`` for ``network``, read as the model was trained to read them
    (``pixel_range``, its training pixelRange: uint8 arrays and bytes are pixels 0..255, other numbers whole
    0..255 or multiples of 1/255 in 0..1; never rescaled or rounded); ValueError naming what is wrong."""
    from mnist_lenet_spark.config import ConfigError
    from mnist_lenet_spark.executor import rows
    x = model_input
    if isinstance(x, pd.DataFrame) and x.shape[1] == 1 and x.dtypes.iloc[0] == object:
        x = x.iloc[:, 0]
    if isinstance(x, pd.Series):  # one image per cell: a sequence of pixels or their bytes
        x = np.stack([np.frombuffer(v, np.uint8) if isinstance(v, (bytes, bytearray)) else np.asarray(v)
                      for v in x]) if len(x) else np.empty((0, int(np.prod(network.input_shape))), np.uint8)
    elif isinstance(x, pd.DataFrame):
        x = x.to_numpy()
    try:
        images = rows.model_pixels(network, x, "model input", pixel_range,
                                   declare=lambda r: f"a model trained with pixelRange '{r}' (this one: "
                                                     f"'{pixel_range}')")
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return images.reshape(len(images), *network.input_shape)  # (n, C, H, W)


class NetworkModel(mlflow.pyfunc.PythonModel):
    """``predict`` with this package's NumPy inference (``executor.inference.predict_images``)."""

    def load_context(self, context):
        from mnist_lenet_spark import models
        definition = json.loads(Path(context.artifacts["network"]).read_text())
        self.network = models.network_from(definition)
        contract = context.artifacts.get("input")  # absent in a model logged by 0.2.0: pixels 0..255
        self.pixel_range = json.loads(Path(contract).read_text())["pixel_range"] if contract else "0..255"
        with np.load(context.artifacts["weights"]) as z:
            self.weights = {name: z[name] for name in z.files}

    def predict(self, context, model_input, params=None):
        from mnist_lenet_spark.executor import inference
        images = images_of(model_input, self.network, self.pixel_range)
        probs = inference.predict_images(self.network, self.weights, images)  # (n, classes)
        out = pd.DataFrame({"prediction": np.argmax(probs, axis=1).astype(np.int64)})
        for k in range(probs.shape[1]):
            out[f"probability_{k}"] = probs[:, k].astype(np.float64)
        return out


def package_code(folder: Path) -> Path:
    """A copy of this package's Python files (not its bundled data or caches) under ``folder``: the model's code."""
    target = folder / PACKAGE.name
    shutil.copytree(PACKAGE, target, ignore=lambda d, names: [
        n for n in names if not (n.endswith(".py") or (Path(d, n).is_dir() and n not in ("__pycache__", "_bundled")))])
    return target


def log_model(network, weights: dict, folder: Path, pixel_range: str, name: str = "model"):
    """Log ``weights`` of ``network`` (a ``models`` network with ``to_json``), trained on pixels read in
    ``pixel_range``, into the active run as an MLflow pyfunc model called ``name``; ``folder``: a scratch folder
    for the files. Returns MLflow's ModelInfo."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "weights.npz", **weights)
    (folder / "network.json").write_text(json.dumps(network.to_json()))
    (folder / "input.json").write_text(json.dumps({"pixel_range": pixel_range}))  # the training contract
    code = package_code(folder / "code")
    requirements = [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]
    artifacts = {"weights": str(folder / "weights.npz"), "network": str(folder / "network.json"),
                 "input": str(folder / "input.json")}
    options = {"python_model": NetworkModel(), "artifacts": artifacts, "code_paths": [str(code)],
               "pip_requirements": requirements}
    try:
        return mlflow.pyfunc.log_model(name=name, **options)
    except TypeError:  # MLflow 2: the model's place in the run is its artifact_path
        return mlflow.pyfunc.log_model(artifact_path=name, **options)
