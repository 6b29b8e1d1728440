"""The interface a model offers to be trained here (any object with the attributes of ``Model``: the trainers only call
these), and the parameter helpers every model uses (``nn.params``)."""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from ..nn.params import Params, ParamSpec, add_l2, flatten, param_spec, unflatten  # noqa: F401


class Model(Protocol):
    #: names of the parameters that carry the L2 penalty (weights, not biases)
    REGULARIZED: Sequence[str]
    #: (C, H, W) of one scaled input image; the data's uint8 images hold C x H x W pixels each, channel-major
    input_shape: tuple[int, int, int]
    #: how many classes: labels are 0 .. classes - 1, ``predict`` gives (N, classes)
    classes: int

    # Optional, for state that is not trained (batch norm's running statistics), kept in the parameter vector:
    # STATE names those entries; in training mode ``loss_and_grads`` puts the batch's statistics in their gradient
    # slots, and the trainer moves them by STATE_MOMENTUM towards the step's count-weighted average of those
    # (``loop.update.update_state``) instead of taking an SGD step. A model with STATE always trains in training mode.
    # STATE: Sequence[str]; STATE_MOMENTUM: float

    def init_params(self, seed: int) -> Params:
        """Fresh float32 parameters, the same for the same seed."""

    def loss_and_grads(self, params: Params, X: np.ndarray, y: np.ndarray, *, train: bool = True,
                       rng: np.random.Generator | None = None, l2: float = 0.0) -> tuple[float, Params]:
        """Mean loss over the batch plus ``0.5 * l2 * sum(W**2)`` over REGULARIZED, and its gradients."""

    def predict(self, params: Params, X: np.ndarray) -> np.ndarray:
        """(N, classes) class probabilities, inference mode."""
