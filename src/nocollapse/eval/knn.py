"""Weighted k-nearest-neighbour classification on frozen features.

The headline protocol of self-supervised learning (Wu et al., "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", CVPR 2018, §3.4; the same vote as lightly and solo-learn):
L2-normalise the features, find for each test point its k most cosine-similar training points, and let
each neighbour vote for its class with weight ``exp(s / T)``. W-MSE (Ermolov et al., ICML 2021) instead
reports a plain majority vote of the k = 5 Euclidean-nearest neighbours of the *unnormalised* features;
``metric="euclidean", weighting="uniform", k=5`` reproduces it.

Definitions, for a test point x and training points yⱼ with labels cⱼ:

* similarity ``s_j = cos(x, y_j) = x̂ᵀŷ_j`` (``metric="cosine"``) or ``s_j = −‖x − y_j‖₂``
  (``metric="euclidean"``, raw features), so that "nearest" always means "largest s";
* neighbours ``N_k(x)`` = the k training points with the largest s (ties between equal similarities are
  broken by ``torch.topk``, i.e. unspecified — on real-valued features they do not occur);
* weights ``w_j = exp((s_j − s_max) / T)`` (``weighting="exp"``) or ``w_j = 1`` (``"uniform"``), where
  ``s_max = max_{j ∈ N_k} s_j``. Subtracting ``s_max`` multiplies every weight of one test point by the same
  constant, so the vote is unchanged, but it keeps Euclidean weights ``exp(−d/T)`` from underflowing to 0
  when distances are large compared with T;
* class score ``S_c = Σ_{j ∈ N_k(x), c_j = c} w_j``; prediction ``argmax_c S_c``; a tie between classes
  goes to the smallest class index (``torch.argmax`` returns the first maximum), as in W-MSE's
  ``unique(return_counts=True)`` + ``argmax``.

``k`` larger than the training set is clamped: ``k_eff = min(k, N_train)``, i.e. every training point
votes. This keeps small sanity runs (a few hundred training points evaluated with the standard k = 200)
working instead of failing; ``knn_accuracies`` still reports the result under the requested k.

Errors: problems with the *data* (shapes that do not match, empty sets, labels outside
``[0, num_classes)``, non-integer labels) raise :class:`nocollapse.errors.UserError`, because they come
from the user's dataset or feature extraction and the message says what to fix. Invalid *arguments*
(k < 1, T ≤ 0, unknown metric, chunk_size < 1) are programming errors and raise :class:`ValueError`.

Cost: one ``(chunk × D) @ (D × N_train)`` matrix product and one top-k per chunk of test rows, so memory is
O(chunk_size × N_train) and time is dominated by the ``M·N·D`` multiply-adds — Fashion-MNIST raw pixels
(60k × 784 train, 10k test) take a few seconds on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from nocollapse.eval.checks import check_same_dim, check_split

Metric = Literal["cosine", "euclidean"]
Weighting = Literal["exp", "uniform"]

__all__ = ["knn_predict", "knn_accuracy", "knn_accuracies"]


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    metric: Metric = "cosine",
    weighting: Weighting = "exp",
    chunk_size: int = 1024,
) -> Tensor:
    """Predict a class for every test point by a weighted vote of its k nearest training points.

    See the module docstring for the exact formulas, the clamping rule for k and the tie rules.

    Args:
        train_features: (N, D) features of the labelled set (any float dtype, any device).
        train_labels: (N,) integer labels in ``[0, num_classes)``.
        test_features: (M, D) features to classify.
        num_classes: number of classes C.
        k: neighbours per test point; clamped to N.
        temperature: T in ``exp(s / T)``; only used with ``weighting="exp"``.
        metric: ``"cosine"`` (normalised features) or ``"euclidean"`` (raw features).
        weighting: ``"exp"`` (InstDisc) or ``"uniform"`` (majority vote).
        chunk_size: test rows per similarity block; memory is O(chunk_size × N).

    Returns:
        (M,) int64 predicted labels, on the device of ``test_features``. The work runs on the device of
        ``train_features`` in float32.
    """
    return _knn_predict_many(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        ks=(k,),
        temperature=temperature,
        metric=metric,
        weighting=weighting,
        chunk_size=chunk_size,
    )[k]


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    metric: Metric = "cosine",
    weighting: Weighting = "exp",
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_predict` against ``test_labels`` (M,)."""
    return knn_accuracies(
        train_features,
        train_labels,
        test_features,
        test_labels,
        num_classes=num_classes,
        ks=(k,),
        temperature=temperature,
        metric=metric,
        weighting=weighting,
        chunk_size=chunk_size,
    )[k]


def knn_accuracies(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.1,
    metric: Metric = "cosine",
    weighting: Weighting = "exp",
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Top-1 accuracy for several k at the cost of one: ``{k: accuracy}`` in the order of ``ks``.

    The similarities and the sorted top-``max(ks)`` neighbours are computed once per chunk; each smaller k
    votes with the first k of those sorted neighbours, which are exactly its own k nearest neighbours.
    The result for each k equals a separate :func:`knn_accuracy` call.
    """
    check_split(test_features, test_labels, "test", num_classes, "kNN")
    predictions = _knn_predict_many(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        ks=ks,
        temperature=temperature,
        metric=metric,
        weighting=weighting,
        chunk_size=chunk_size,
    )
    target = test_labels.to(device=test_features.device, dtype=torch.long)
    return {k: (predictions[k] == target).float().mean().item() for k in ks}


def _knn_predict_many(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    num_classes: int,
    ks: Sequence[int],
    temperature: float,
    metric: str,
    weighting: str,
    chunk_size: int,
) -> dict[int, Tensor]:
    """Shared body: ``{k: (M,) predictions}`` from one similarity pass with k_max = max(ks)."""
    ks = tuple(ks)
    _check_arguments(ks, temperature, metric, weighting, chunk_size, num_classes)
    check_split(train_features, train_labels, "train", num_classes, "kNN")
    check_split(test_features, None, "test", num_classes, "kNN")
    check_same_dim(train_features, test_features, "kNN")

    device = train_features.device
    n_train = train_features.shape[0]
    # Clamp each k to the training-set size (documented rule): every training point votes.
    k_eff = {k: min(k, n_train) for k in ks}
    k_max = max(k_eff.values())

    # float32 whatever the input: half-precision dot products of 512-d features lose the small
    # similarity differences that decide the neighbour order.
    bank = train_features.detach().to(dtype=torch.float32)
    if metric == "cosine":
        bank = F.normalize(bank, dim=1)
    else:
        # Distances do not change under a common translation; centring on the training mean makes the
        # norms in ‖x‖² + ‖y‖² − 2xᵀy small, so less float32 precision cancels away (features with a large
        # common offset, e.g. post-ReLU encoder outputs, would otherwise lose neighbour order).
        centre = bank.mean(dim=0)  # (D,)
        bank = bank - centre
        bank_sq_norms = bank.square().sum(dim=1)  # (N,)
    bank_t = bank.t()  # (D, N) view: BLAS takes the transposed layout directly, no second copy of the bank
    labels = train_labels.detach().to(device=device, dtype=torch.long)

    outputs: dict[int, list[Tensor]] = {k: [] for k in ks}
    with torch.no_grad():
        for start in range(0, test_features.shape[0], chunk_size):
            queries = test_features[start : start + chunk_size].detach()
            queries = queries.to(device=device, dtype=torch.float32)  # (B, D)
            if metric == "cosine":
                similarity = F.normalize(queries, dim=1) @ bank_t  # (B, N) cosines
            else:
                queries = queries - centre
                # ‖x − y‖² = ‖x‖² + ‖y‖² − 2xᵀy; ranking needs only the square, so the sqrt is taken on
                # the k_max survivors. clamp: rounding can make the expansion slightly negative.
                sq_dist = torch.addmm(bank_sq_norms.unsqueeze(0), queries, bank_t, alpha=-2.0)
                sq_dist += queries.square().sum(dim=1, keepdim=True)
                similarity = sq_dist.neg_()  # (B, N) = −‖x − y‖², same order as −‖x − y‖
            top_sim, top_idx = similarity.topk(k_max, dim=1, largest=True, sorted=True)  # (B, k_max)
            del similarity
            if metric == "euclidean":
                top_sim = -top_sim.neg().clamp_min(0).sqrt()  # s = −‖x − y‖
            top_labels = labels[top_idx]  # (B, k_max)
            for k in ks:
                kk = k_eff[k]
                if weighting == "exp":
                    # Sorted descending, so column 0 holds s_max: shift for stability, vote unchanged.
                    weights = ((top_sim[:, :kk] - top_sim[:, :1]) / temperature).exp()
                else:
                    weights = torch.ones_like(top_sim[:, :kk])
                scores = torch.zeros(top_sim.shape[0], num_classes, device=device, dtype=torch.float32)
                scores.scatter_add_(1, top_labels[:, :kk], weights)  # (B, C): S_c
                outputs[k].append(scores.argmax(dim=1))

    # The test set is non-empty (checked), so every list has at least one chunk.
    return {k: torch.cat(parts).to(test_features.device) for k, parts in outputs.items()}


def _check_arguments(
    ks: tuple[int, ...], temperature: float, metric: str, weighting: str, chunk_size: int, num_classes: int
) -> None:
    if not ks:
        raise ValueError("kNN: ks is empty; pass at least one number of neighbours, e.g. ks=(20, 200)")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"kNN: every k must be an integer >= 1, got {k!r}")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"kNN: metric must be 'cosine' or 'euclidean', got {metric!r}")
    if weighting not in ("exp", "uniform"):
        raise ValueError(f"kNN: weighting must be 'exp' or 'uniform', got {weighting!r}")
    if weighting == "exp" and not temperature > 0:
        raise ValueError(f"kNN: temperature must be > 0 for exp weighting, got {temperature!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"kNN: chunk_size must be an integer >= 1, got {chunk_size!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"kNN: num_classes must be an integer >= 1, got {num_classes!r}")
