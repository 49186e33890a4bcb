"""Collapse warnings: signs, read while a run trains, that its embeddings are collapsing.

Two signals (``SPEC.md`` §6), each compared with what embeddings spread over the sphere would give:

- the standard deviation of the ℓ2-normalised online projections (SimSiam's collapse signal), measured on
  every training batch by the method at no extra cost. Scaled by √d it is about 1 when d-dimensional
  embeddings spread over the sphere and 0 when they all point the same way;
- RankMe of the monitor's test features and projections: the effective number of directions they use,
  1 when every embedding lies on one line.

A warning does not stop the run: runs can recover, and someone studying collapse wants to watch it
happen. It is printed, written to ``metrics.jsonl`` as a ``warning`` line and shown in the report.
"""

from __future__ import annotations

import math

from nocollapse.eval.geometry import GeometryScores

# std·√d of the normalised projections below this warns. Healthy runs of every preset stay well above it
# (docs/benchmarks.md, "Collapse signals of healthy runs"); a collapsing run falls through it on its way to 0.
STD_WARNING = 0.1
# RankMe below this fraction of the dimension (and below RANKME_FLOOR directions in any case) warns.
RANKME_FRACTION = 0.01
RANKME_FLOOR = 2.0

ADVICE = "if it persists, lower optim.lr, lengthen optim.warmup_epochs or add a spreading term (e.g. regularizers.uniformity=1)"


def rankme_warning_level(dim: int) -> float:
    """The RankMe below which ``dim``-dimensional embeddings count as collapsing."""
    return max(RANKME_FLOOR, RANKME_FRACTION * dim)


class CollapseWatch:
    """Turns the signals into warnings: once when a signal falls below its level, again only after it recovered.

    Args:
        projection_dim: d of the online projections whose batch std the method reports.
    """

    def __init__(self, projection_dim: int) -> None:
        self.projection_dim = projection_dim
        self._low: set[str] = set()  # the signals below their level at the last check

    def state_dict(self) -> list[str]:
        """The signals below their level: a resumed run warns exactly where the uninterrupted one does."""
        return sorted(self._low)

    def load_state_dict(self, low: list[str]) -> None:
        self._low = set(low)

    def _update(self, signal: str, low: bool, message: str) -> list[str]:
        was_low = signal in self._low
        if low:
            self._low.add(signal)
        else:
            self._low.discard(signal)
        return [message] if low and not was_low else []

    def check_batch_std(self, embedding_std: float) -> list[str]:
        """Warnings for the mean normalised std of the online projections over a logging window."""
        scaled = embedding_std * math.sqrt(self.projection_dim)
        return self._update("std", scaled < STD_WARNING,
                            f"the online projections are collapsing: the std of the normalised projections is {embedding_std:.3g}, "
                            f"std·√d = {scaled:.3g} (about 1 when spread over the sphere, 0 when collapsed; warning below {STD_WARNING}); {ADVICE}")

    def check_geometry(self, geometry: dict[str, GeometryScores]) -> list[str]:
        """Warnings for the RankMe of each representation the monitor measured (``{"features": ..., "projections": ...}``)."""
        warnings = []
        for name, scores in geometry.items():
            level = rankme_warning_level(scores.dim)
            warnings += self._update(f"rankme:{name}", scores.rankme < level,
                                     f"the test {name} are collapsing: RankMe {scores.rankme:.2f} of {scores.dim} dimensions "
                                     f"(warning below {level:g}); {ADVICE}")
        return warnings
