"""A trained network as an MLflow model (``mlflow.pyfunc``): the one module of this package that imports mlflow,
imported only when MLflow is asked for (``tracking``), and where a saved model is loaded.

The model holds the weights (``weights.npz``) and the network's JSON definition (``network.json``) as artifacts,
and a copy of this package's Python code, so ``mlflow.pyfunc.load_model(uri).predict(x)`` runs in any process with
numpy, pandas and mlflow: no Spark, no install of this package. ``x``: a pandas DataFrame of C*H*W pixel columns
(or of one column holding each image's pixels as a sequence or bytes), or a NumPy array (n, C*H*W) or
(n, C, H, W) ((n, H, W) for one channel), pixels 0..255 channel-major as in training. The result is a
DataFrame: ``prediction`` (the class) and ``probability_0`` .. ``probability_{K-1}``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

PACKAGE = Path(__file__).resolve().parent


def images_of(model_input, input_shape: tuple[int, int, int]) -> np.ndarray:
    """(n, C, H, W) pixels 0..255 (uint8, or float as given: never rounded) of ``model_input``; ValueError naming
    what is wrong."""
    pixels = int(np.prod(input_shape))
    shape_text = "x".join(map(str, input_shape))
    x = model_input
    if isinstance(x, pd.DataFrame) and x.shape[1] == 1 and x.dtypes.iloc[0] == object:
        x = x.iloc[:, 0]
    if isinstance(x, pd.Series):  # one image per cell: a sequence of pixels or their bytes
        x = np.stack([np.frombuffer(v, np.uint8) if isinstance(v, (bytes, bytearray)) else np.asarray(v)
                      for v in x]) if len(x) else np.empty((0, pixels))
    elif isinstance(x, pd.DataFrame):
        x = x.to_numpy()
    x = np.asarray(x)
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != pixels:
        raise ValueError(f"model input: expected (n, {pixels}) pixels or (n, {', '.join(map(str, input_shape))}) "
                         f"images (the model takes {shape_text} images), got shape {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"model input: pixels must be numbers 0..255, got {x.dtype}")
        if x.size and not (np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 255):
            raise ValueError(f"model input: pixels must be 0..255, got values from {x.min()} to {x.max()}")
    return x.reshape(len(x), *input_shape)


class NetworkModel(mlflow.pyfunc.PythonModel):
    """``predict`` with this package's NumPy inference (``executor.inference.predict_images``)."""

    def load_context(self, context):
        from mnist_lenet_spark import models
        definition = json.loads(Path(context.artifacts["network"]).read_text())
        self.network = models.by_name(definition)
        with np.load(context.artifacts["weights"]) as z:
            self.weights = {name: z[name] for name in z.files}

    def predict(self, context, model_input, params=None):
        from mnist_lenet_spark.executor import inference
        images = images_of(model_input, tuple(self.network.input_shape))
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


def log_model(network, weights: dict, folder: Path, name: str = "model"):
    """Log ``weights`` of ``network`` (a ``models`` network with ``to_json``) into the active run as an MLflow
    pyfunc model called ``name``; ``folder``: a scratch folder for the files. Returns MLflow's ModelInfo."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "weights.npz", **weights)
    (folder / "network.json").write_text(json.dumps(network.to_json()))
    code = package_code(folder / "code")
    requirements = [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]
    artifacts = {"weights": str(folder / "weights.npz"), "network": str(folder / "network.json")}
    options = {"python_model": NetworkModel(), "artifacts": artifacts, "code_paths": [str(code)],
               "pip_requirements": requirements}
    try:
        return mlflow.pyfunc.log_model(name=name, **options)
    except TypeError:  # MLflow 2: the model's place in the run is its artifact_path
        return mlflow.pyfunc.log_model(artifact_path=name, **options)
