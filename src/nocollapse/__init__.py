"""nocollapse: non-contrastive self-supervised learning that does not collapse."""

__version__ = "0.1.0"
