"""Where a run's state is kept and comes from: the checkpoint format (an .npz of the arrays and a JSON of the rest,
written atomically), the check that a checkpoint continues the run resuming it, and a fresh state that starts from
a trained model's weights."""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnist_lenet_spark import files
from mnist_lenet_spark.config import ConfigError, SGDConfig
from mnist_lenet_spark.loop.update import EarlyStopping, TrainState, new_state
from mnist_lenet_spark.models import base

log = logging.getLogger(__name__)


def save_checkpoint(path: str | os.PathLike, state: TrainState, config: SGDConfig, extra: dict | None = None) -> None:
    """Write parameters, momentum, step, epoch, config, early stopping's memory and (asynchronous mode) the
    shards' positions atomically (temp file + rename)."""
    meta = {"step": state.step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
            "config": dataclasses.asdict(config), **(extra or {})}
    if state.positions is not None:
        meta["positions"] = [int(p) for p in state.positions]
    arrays = {"params": state.params, "velocity": state.velocity}
    if state.early_stopping is not None:
        meta["early_stopping"] = state.early_stopping.meta()
        if state.early_stopping.best_params is not None:
            arrays["best_params"] = state.early_stopping.best_params
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, meta=np.array(json.dumps(meta)))
    files.write_atomically(path, buffer.getvalue())
    log.info("checkpoint at step %d written to %s", state.step, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[TrainState, dict[str, Any]]:
    """(state, meta) from ``save_checkpoint``; a bad file raises ConfigError naming it."""
    path = Path(path)
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            state = TrainState(z["params"], z["velocity"], int(meta["step"]), int(meta["epoch"]),
                               int(meta["step_in_epoch"]))
            if meta.get("positions") is not None:
                state.positions = [int(p) for p in meta["positions"]]
            if meta.get("early_stopping") is not None:
                found = meta["early_stopping"]
                state.early_stopping = EarlyStopping(
                    str(found["metric"]), None if found["best"] is None else float(found["best"]),
                    int(found["best_step"]), z["best_params"] if "best_params" in z.files else None,
                    int(found["bad_validations"]),
                    None if found["stopped_step"] is None else int(found["stopped_step"]))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such checkpoint") from None
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
        # empty, truncated, random bytes, or another program's .npz
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not a checkpoint of this tool ({reason})") from None
    return state, meta


def resume_state(path: str | os.PathLike, expected: dict, model: base.Model, config: SGDConfig,
                 name: Callable[[str], str]) -> TrainState:
    """The state of the checkpoint at ``path``, refused (ConfigError naming the file and the setting) unless it
    continues the run that ``expected`` describes: what ``save_checkpoint``'s ``extra`` recorded (``mode``, ``seed``,
    ``batch_size``, ``workers``, ``backup_workers``, ``model``, ``data``, as far as the caller knows them) over
    ``model``, with ``config`` (the run's, learning rate scaled). ``name(key)`` spells a setting as the caller's user
    sets it (the job: ``--batch-size``; the estimator: ``batchSize``). A changed learning rate is allowed and logged."""
    state, meta = load_checkpoint(path)
    saved = {**meta.get("config", {}), **meta}
    saved_mode = "async" if state.positions is not None else "sync"  # checkpoints from before the mode are sync
    mode = expected.get("mode", "sync")
    if saved_mode != mode:
        raise ConfigError(f"{path}: written with {name('mode')} {saved_mode}, resumed with {name('mode')} {mode} (a "
                          f"run goes on in the mode it started in)")
    for key, value in expected.items():
        if key in saved and saved[key] != value:
            raise ConfigError(f"{path}: written with {name(key)} {saved[key]}, resumed with {value}")
    _, fresh = new_state(model, config.seed)
    for part in ("params", "velocity"):
        found, wanted = getattr(state, part), getattr(fresh, part)
        if found.shape != wanted.shape or found.dtype != wanted.dtype:
            raise ConfigError(f"{path}: {part} of shape {found.shape} {found.dtype}, the model has "
                              f"{wanted.shape} {wanted.dtype}")
    watched = state.early_stopping.metric if state.early_stopping is not None else None
    if config.early_stopping_patience and watched not in (None, config.early_stopping_metric):
        raise ConfigError(f"{path}: written with {name('early_stopping_metric')} {watched}, resumed with "
                          f"{config.early_stopping_metric}")
    if saved.get("lr") is not None and saved["lr"] != config.lr:
        log.info("resuming with lr %g (the checkpoint's run had %g)", config.lr, saved["lr"])
    log.info("resuming from %s at step %d", path, state.step)
    return state


def warm_state(params: base.Params, model: base.Model, seed: int, source: str) -> TrainState:
    """A fresh state (step 0, no momentum) that starts from ``params`` (a trained model's weights) instead of
    ``model``'s initialisation; ConfigError naming ``source`` when the weights are not ``model``'s (a name or a
    shape differs)."""
    spec, fresh = new_state(model, seed)
    wanted, found = dict(spec), {name: tuple(np.shape(value)) for name, value in params.items()}
    if found != wanted:
        missing = [n for n in wanted if n not in found]
        extra = [n for n in found if n not in wanted]
        shape = next((n for n in wanted if n in found and found[n] != wanted[n]), None)
        what = (f"{shape} has shape {found[shape]}, the network's is {wanted[shape]}" if shape else
                f"it lacks {', '.join(missing[:3])}" if missing else f"it has {', '.join(extra[:3])}, which the "
                f"network does not")
        raise ConfigError(f"{source}: its weights are not this network's ({what}; {len(found)} arrays, the network "
                          f"has {len(wanted)})")
    fresh.params = base.flatten(params, spec, fresh.params.dtype)  # (P,)
    return fresh
