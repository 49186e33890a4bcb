"""nocollapse: non-contrastive self-supervised learning that does not collapse."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Preprocess", "__version__", "load_encoder"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import nocollapse` (and the command line's start) does not load torch.
    if name in ("load_encoder", "Preprocess"):
        from nocollapse import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'nocollapse' has no attribute {name!r}")
