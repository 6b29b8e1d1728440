"""Writing output files so that a reader never sees half of one, and JSON that any reader can parse."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def write_atomically(path: str | os.PathLike, content: bytes | str) -> Path:
    """Write ``content`` to a temporary file beside ``path``, then rename it over ``path``: a crash leaves either the
    old file or the new one, never a mix. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the file
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def imported_from_zip() -> bool:
    """Whether this package was imported from a zip (spark-submit --py-files dist/NAME.zip)."""
    return Path(__file__).resolve().parent.parent.suffix == ".zip"


#: where an installed wheel holds the checkout's conf/ and data/mnist/ (pyproject.toml maps them there)
BUNDLED_DIR = Path(__file__).resolve().parent / "_bundled"


def resource_root() -> Path:
    """The folder holding ``conf/`` and ``data/mnist/``: the installed package's own copy (a wheel), else the
    checkout's root (a checkout or an editable install: the package's parent; the package imported from
    ``dist/NAME.zip``: the folder that holds ``dist/``)."""
    if (BUNDLED_DIR / "conf").is_dir():
        return BUNDLED_DIR
    root = Path(__file__).resolve().parent.parent
    if imported_from_zip():
        root = root.parent.parent if root.parent.name == "dist" else root.parent
    return root


def resource(*parts: str) -> Path:
    """``resource("conf", "spark-defaults.conf")``: a file of the package's conf/ or data/ (``resource_root``)."""
    return resource_root().joinpath(*parts)


def strict_json(value, indent: int | None = None) -> str:
    """JSON without NaN or Infinity (which JSON does not have): non-finite numbers become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(value), allow_nan=False, indent=indent, default=str)
