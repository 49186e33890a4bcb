"""Evaluation with few labels: kNN and the linear probe fitted on class-balanced subsets of the training labels.

BYOL's semi-supervised table (§3.2, 1% and 10% of ImageNet's labels) and the few-shot protocols ask how much
a representation saves in labels. Here the frozen features are scored as in the full evaluation, but the kNN
bank and the probe's training set are a labelled subset; the test split stays whole.

* A subset is a **fraction** f of each class (``round(f·n_c)`` images of class c, at least one) or a number
  of **shots** per class. Class balance keeps a 1% subset of a 10-class set from missing a class by chance.
* Each subset is drawn ``draws`` times; the scores are reported per draw and as mean ± sample std over the
  draws, which is the spread due to *which* images got labels.
* The draws depend only on the labels, the subset, the draw index and ``seed`` (a private generator per draw,
  seeded from a checksum of those, never the global RNG): every representation of a run and every run with
  the same seed is scored on the same labelled images, so their rows compare like for like.
* kNN's k is clamped to the subset size (:mod:`nocollapse.eval.knn`): with 10 labelled images, k = 20 votes
  with all 10. The probe runs at least ``min_steps`` Adam steps (:func:`~nocollapse.eval.linear.linear_probe`),
  so a 600-image subset is fitted as far as the full set.
"""

from __future__ import annotations

import statistics
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nocollapse.errors import UserError
from nocollapse.eval.knn import knn_accuracies
from nocollapse.eval.linear import linear_probe


@dataclass(frozen=True)
class LabelSubset:
    """Which labels a few-label evaluation keeps: ``fraction`` of each class, or ``shots`` images per class."""

    fraction: float | None = None
    shots: int | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.shots is None):
            raise ValueError(f"a label subset has a fraction or shots, not both or neither (got {self})")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"label fraction must be in (0, 1], got {self.fraction!r}")
        if self.shots is not None and self.shots < 1:
            raise ValueError(f"shots per class must be >= 1, got {self.shots!r}")

    @property
    def name(self) -> str:
        """``1%``, ``10%``, ``0.5%`` or ``5-shot``: the subset's column in tables and its key in eval.json."""
        return f"{100 * self.fraction:g}%" if self.fraction is not None else f"{self.shots}-shot"

    def per_class(self, class_size: int) -> int:
        """Images kept of a class of ``class_size`` images: a fraction keeps at least one of a class that has any."""
        if self.shots is not None:
            return self.shots
        return max(1, round(self.fraction * class_size)) if class_size else 0


def label_subsets(fractions: Sequence[float], shots: Sequence[int]) -> list[LabelSubset]:
    """The subsets of ``eval.label_fractions`` and ``eval.shots``, in that order."""
    return [LabelSubset(fraction=f) for f in fractions] + [LabelSubset(shots=s) for s in shots]


def balanced_subset(labels: Tensor, num_classes: int, subset: LabelSubset, generator: torch.Generator) -> Tensor:
    """Sorted indices into ``labels``: ``subset.per_class(n_c)`` distinct images of every class c, drawn
    uniformly with ``generator``. A class with fewer images than the subset asks for is a UserError."""
    labels = labels.cpu()
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().squeeze(1)
        keep = subset.per_class(len(members))
        if keep > len(members):
            raise UserError(f"eval.shots={subset.shots}: class {c} has only {len(members)} labelled training image(s), fewer than the "
                            f"{subset.name} subset takes; ask for at most {len(members)} shots, or use eval.label_fractions")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


def draw_subsets(labels: Tensor, num_classes: int, subsets: Sequence[LabelSubset], draws: int, seed: int) -> dict[LabelSubset, list[Tensor]]:
    """``draws`` index sets of each subset; draw i of a subset is the same for every call with the same
    labels and seed, whatever else is drawn (each has its own generator)."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws!r}")
    result = {}
    for subset in subsets:
        result[subset] = []
        for draw in range(draws):
            # crc32 of the text, not hash(): Python salts str hashes per process, and the draws must not change between runs.
            generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{subset.name}/{draw}".encode()))
            result[subset].append(balanced_subset(labels, num_classes, subset, generator))
    return result


@dataclass
class FewLabelScores:
    """Accuracies (in [0, 1]) of one representation with one label subset, one value per draw."""

    subset: str
    labels: int  # labelled training images per draw
    draws: int
    knn: dict[int, list[float]]
    linear: list[float]
    seconds: float = 0.0  # wall-clock of all the draws' kNN and probes

    def summary(self) -> dict[str, tuple[float, float]]:
        """``{"kNN k=20": (mean, std), ..., "linear": (mean, std)}``; std is the sample std over draws (0 for one)."""
        columns = {f"kNN k={k}": values for k, values in self.knn.items()}
        if self.linear:
            columns["linear"] = self.linear
        return {name: (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0) for name, values in columns.items()}

    def to_dict(self) -> dict:
        return {"subset": self.subset, "labels": self.labels, "draws": self.draws,
                "knn": {str(k): values for k, values in self.knn.items()}, "linear": self.linear,
                "summary": {name: {"mean": mean, "std": std} for name, (mean, std) in self.summary().items()},
                "seconds": round(self.seconds, 2)}


def few_label_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    draws: dict[LabelSubset, list[Tensor]],
    *,
    num_classes: int,
    knn_k: Sequence[int] = (20, 200),
    knn_temperature: float = 0.1,
    probe: bool = True,
    probe_epochs: int = 30,
    probe_min_steps: int = 1500,
    seed: int = 0,
) -> list[FewLabelScores]:
    """kNN for each k and, if ``probe``, a linear probe, each fitted on every draw of every subset of the
    training rows and scored on the whole test split (the probe's minibatch order seeded with ``seed``)."""
    device = train_features.device
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    results = []
    for subset, index_sets in draws.items():
        started = time.perf_counter()
        knn: dict[int, list[float]] = {k: [] for k in knn_k}
        linear: list[float] = []
        for indices in index_sets:
            indices = indices.to(device)
            x, y = train_features[indices], train_labels[indices]
            for k, accuracy in knn_accuracies(x, y, test_features, test_labels, num_classes=num_classes, ks=tuple(knn_k),
                                              temperature=knn_temperature).items():
                knn[k].append(accuracy)
            if probe:
                linear.append(linear_probe(x, y, test_features, test_labels, num_classes=num_classes, epochs=probe_epochs,
                                           min_steps=probe_min_steps, seed=seed, device=device)["top1"])
        results.append(FewLabelScores(subset.name, len(index_sets[0]), len(index_sets), knn, linear, time.perf_counter() - started))
    return results
