"""Evaluation of frozen representations: kNN, linear probe, RankMe, and the table with baselines."""

from nocollapse.eval.evaluate import RepresentationScores, format_table, score_features
from nocollapse.eval.features import encoder_features, pixel_features
from nocollapse.eval.geometry import rankme, singular_spectrum
from nocollapse.eval.knn import knn_accuracies, knn_accuracy, knn_predict
from nocollapse.eval.linear import linear_probe

__all__ = [
    "RepresentationScores",
    "encoder_features",
    "format_table",
    "knn_accuracies",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "pixel_features",
    "rankme",
    "score_features",
    "singular_spectrum",
]
