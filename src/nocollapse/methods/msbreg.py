"""MSBReg: BYOL's architecture with M views pulled to their target centroid (Moon et al., WACV 2023)."""

from __future__ import annotations

from torch import Tensor, nn

from nocollapse.losses.msbreg import CENTROID_VARIANTS, multiview_centroid_loss
from nocollapse.methods.byol import BYOL


class MSBReg(BYOL):
    """Online + EMA target + predictor as in :class:`BYOL`; loss :func:`~nocollapse.losses.msbreg.multiview_centroid_loss`.

    The paper's full objective ``L_MC + λ_SV L_SV + λ_BD L_BD`` is this method with the
    ``singular_value`` and ``brownian`` regularizers attached (the ``fmnist-msbreg`` preset sets both);
    without them it is the multiview centroid loss alone, the ablation. M ≥ 2 views
    (``augment.num_views``); more views give a better centroid for the same batch.

    Args:
        encoder, projector_hidden, projection_dim, predictor_hidden: as for :class:`BYOL`.
        centroid: ``"per_view"`` (each view's prediction to the target centroid) or ``"mean"``
            (the online centroid to the target centroid).
    """

    def __init__(self, encoder: nn.Module, *, projector_hidden: int = 4096, projection_dim: int = 256, predictor_hidden: int = 4096,
                 centroid: str = "per_view") -> None:
        if centroid not in CENTROID_VARIANTS:
            raise ValueError(f"centroid={centroid!r} is not one of {CENTROID_VARIANTS}")
        super().__init__(encoder, projector_hidden=projector_hidden, projection_dim=projection_dim, predictor_hidden=predictor_hidden)
        self.centroid = centroid

    def objective(self, views: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        projections, predictions, targets = self.branches(views)
        return {"centroid": multiview_centroid_loss(predictions, targets, variant=self.centroid)}, projections
