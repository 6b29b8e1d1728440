"""Optimisers as pure functions: ``init(w) -> state`` and ``update(w, dw, state, ...) -> (w, state)``."""
