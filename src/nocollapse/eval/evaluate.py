"""The evaluation tables: kNN and linear-probe accuracy of representations, baselines beside them,
and the geometry of their test embeddings."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from nocollapse.eval.few_labels import FewLabelScores, LabelSubset, few_label_scores
from nocollapse.eval.geometry import GeometryScores, geometry_scores
from nocollapse.eval.knn import knn_accuracies
from nocollapse.eval.linear import linear_probe


@dataclass
class RepresentationScores:
    """Accuracies (in [0, 1]) of one representation: cosine kNN by k, Euclidean kNN by k (the W-MSE
    protocol; empty unless asked for), linear probe (empty when skipped); and the geometry of its
    test features (:class:`~nocollapse.eval.geometry.GeometryScores`); and the same accuracies fitted on
    subsets of the training labels (:mod:`~nocollapse.eval.few_labels`; empty unless asked for)."""

    name: str
    dim: int
    knn: dict[int, float]
    linear: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    knn_euclidean: dict[int, float] = field(default_factory=dict)
    geometry: GeometryScores | None = None
    few_labels: list[FewLabelScores] = field(default_factory=list)

    def to_dict(self) -> dict:
        geometry = self.geometry.to_dict() if self.geometry else None
        return {"name": self.name, "dim": self.dim, "knn": {str(k): v for k, v in self.knn.items()},
                "knn_euclidean": {str(k): v for k, v in self.knn_euclidean.items()}, "linear": self.linear,
                "geometry": geometry, "few_labels": [scores.to_dict() for scores in self.few_labels], "seconds": round(self.seconds, 2)}


def score_features(
    name: str,
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    knn_k: Sequence[int] = (20, 200),
    knn_temperature: float = 0.1,
    knn_euclidean_k: Sequence[int] = (),
    probe: bool = True,
    probe_epochs: int = 30,
    probe_min_steps: int = 1500,
    seed: int = 0,
    test_views: Tensor | None = None,
    label_draws: dict[LabelSubset, list[Tensor]] | None = None,
) -> RepresentationScores:
    """kNN (cosine, exp(s/T)-weighted) for each k in ``knn_k``; Euclidean, unweighted kNN (W-MSE's
    protocol, k = 5 there) for each k in ``knn_euclidean_k``; if ``probe``, a linear probe; the
    geometry of the test features, with alignment when ``test_views`` (M, B, D) holds the features
    of M augmented views of B test images (:func:`~nocollapse.eval.geometry.geometry_scores`); and the
    cosine kNN and the probe fitted on each draw of ``label_draws``
    (:func:`~nocollapse.eval.few_labels.draw_subsets`: training-row indices by subset)."""
    started = time.perf_counter()
    device = train_features.device
    knn = knn_accuracies(
        train_features, train_labels.to(device), test_features, test_labels.to(device),
        num_classes=num_classes, ks=tuple(knn_k), temperature=knn_temperature,
    )
    knn_euclidean = {}
    if knn_euclidean_k:
        knn_euclidean = knn_accuracies(
            train_features, train_labels.to(device), test_features, test_labels.to(device),
            num_classes=num_classes, ks=tuple(knn_euclidean_k), metric="euclidean", weighting="uniform",
        )
    linear = {}
    if probe:
        linear = linear_probe(
            train_features, train_labels.to(device), test_features, test_labels.to(device),
            num_classes=num_classes, epochs=probe_epochs, min_steps=probe_min_steps, seed=seed, device=device,
        )
        if num_classes <= 10:  # top-5 of 10 classes says little; report it where classes > 10 (SPEC §6)
            linear.pop("top5", None)
    few_labels = []
    if label_draws:
        few_labels = few_label_scores(train_features, train_labels, test_features, test_labels, label_draws, num_classes=num_classes,
                                      knn_k=knn_k, knn_temperature=knn_temperature, probe=probe, probe_epochs=probe_epochs,
                                      probe_min_steps=probe_min_steps, seed=seed)
    geometry = geometry_scores(test_features, test_labels, views=test_views)
    return RepresentationScores(name, train_features.shape[1], knn, linear, time.perf_counter() - started, knn_euclidean, geometry,
                                few_labels)


def format_table(rows: Sequence[RepresentationScores], *, title: str = "") -> str:
    """A plain-text table, one row per representation, accuracies in percent."""
    ks = sorted({k for row in rows for k in row.knn})
    euclidean_ks = sorted({k for row in rows for k in row.knn_euclidean})
    probes = sorted({key for row in rows for key in row.linear})
    header = (["representation", "dim"] + [f"kNN k={k}" for k in ks] + [f"kNN-euclid k={k}" for k in euclidean_ks]
              + [f"linear {p}" for p in probes])
    cell = lambda scores, key: f"{100 * scores[key]:.2f}" if key in scores else "-"
    lines = [[row.name, str(row.dim)] + [cell(row.knn, k) for k in ks] + [cell(row.knn_euclidean, k) for k in euclidean_ks]
             + [cell(row.linear, p) for p in probes] for row in rows]
    return render_table(header, lines, title)


def format_few_label_table(rows: Sequence[RepresentationScores], *, title: str = "") -> str:
    """A plain-text table, one line per representation and label subset, accuracies in percent as mean ± std over
    the draws; empty when no row was scored with few labels."""
    lines_of = [(row.name, scores) for row in rows for scores in row.few_labels]
    if not lines_of:
        return ""
    columns = list(dict.fromkeys(column for _, scores in lines_of for column in scores.summary()))
    header = ["representation", "labels", "per draw", "draws"] + columns

    def cell(summary: dict[str, tuple[float, float]], column: str) -> str:
        return f"{100 * summary[column][0]:.2f} ± {100 * summary[column][1]:.2f}" if column in summary else "-"

    lines = [[name, scores.subset, str(scores.labels), str(scores.draws)] + [cell(scores.summary(), column) for column in columns]
             for name, scores in lines_of]
    return render_table(header, lines, title)


def format_geometry_table(rows: Sequence[tuple[str, GeometryScores]], *, title: str = "") -> str:
    """A plain-text table of (name, geometry) rows: dim, alignment, uniformity, RankMe, separability, std."""
    header = ["representation", "dim", "alignment", "uniformity", "RankMe", "separability", "std"]
    lines = [[name, str(g.dim), "-" if g.alignment is None else f"{g.alignment:.3f}", f"{g.uniformity:.3f}", f"{g.rankme:.1f}",
              "-" if g.separability is None else f"{g.separability:.3f}", f"{g.std:.4f}"] for name, g in rows]
    return render_table(header, lines, title)


def render_table(header: list[str], lines: list[list[str]], title: str) -> str:
    """Columns padded to their widest cell: the first left-aligned, numbers right-aligned; a rule under the header."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]

    def render(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(render(header))
    body = [render(header), rule] + [render(line) for line in lines]
    return "\n".join(([title] if title else []) + body)

