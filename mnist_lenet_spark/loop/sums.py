"""What a gradient task returns and every trainer adds up: the sums over some examples (a leaf: NumPy only)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GradientSum:
    """Sums over some examples, added with ``+``: the unit every trainer reduces."""
    grad_sum: np.ndarray  # (P,) sum of the per-example gradients, without the L2 term
    loss_sum: float
    count: int

    def __add__(self, other: GradientSum) -> GradientSum:
        return GradientSum(self.grad_sum + other.grad_sum, self.loss_sum + other.loss_sum, self.count + other.count)
