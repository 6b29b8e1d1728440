"""Models trainable by this package: see ``base.Model`` for the interface."""
