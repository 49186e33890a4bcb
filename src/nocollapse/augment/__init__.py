"""Batched, device-side augmentation: ops and the view generator built from an :class:`AugmentConfig`."""

from nocollapse.augment.views import AugmentConfig, ViewGenerator

__all__ = ["AugmentConfig", "ViewGenerator"]
