"""A residual block (He et al. 2016): ``branch(x) + shortcut(x)``, each path (options ``branch``, ``shortcut``) a chain
of layers; an empty shortcut is the identity, a projection one a strided 1x1 ``conv2d`` (and batch norm)."""
from __future__ import annotations

import numpy as np

from .layer import Layer, backward_chain, forward_chain, shape_text, shapes
from .plan import plan


class Residual(Layer):
    kind, chains = "residual", ("branch", "shortcut")

    def __init__(self, name: str, options: dict):
        super().__init__(name, {})
        self.branch, self.shortcut = tuple(options["branch"]), tuple(options["shortcut"])
        self.ops = plan(self.branch), plan(self.shortcut)  # how each path runs

    def build(self, in_shape):
        out, short = shapes(self.branch, in_shape)[-1], shapes(self.shortcut, in_shape)[-1]
        if out != short:
            self.refuse(f"its branch gives {shape_text(out)} but its shortcut {shape_text(short)}", in_shape)
        return out

    def forward(self, params, x, train, rng):
        out, branch_caches, stats = forward_chain(self.ops[0], params, x, train, rng)
        short, short_caches, short_stats = forward_chain(self.ops[1], params, x, train, rng)
        return out + short, (branch_caches, short_caches), {**stats, **short_stats}

    def backward(self, params, dout, cache, need_dx=True, overwrite=False):
        (branch_caches, short_caches), grads = cache, {}
        d_short = backward_chain(self.ops[1], params, dout, short_caches, grads)
        # the branch may overwrite dout once the shortcut is done with it and did not pass it through
        branch_owns = overwrite and not np.may_share_memory(d_short, dout)
        d_branch = backward_chain(self.ops[0], params, dout, branch_caches, grads, overwrite=branch_owns)
        if np.may_share_memory(d_branch, dout) and not branch_owns:
            return d_branch + d_short, grads
        return np.add(d_branch, d_short, out=d_branch), grads  # d_branch is a temporary of its own: add in place
