"""Evaluation of frozen representations: kNN, linear probe, geometry, and the tables with baselines."""

from nocollapse.eval.evaluate import RepresentationScores, format_geometry_table, format_table, score_features
from nocollapse.eval.features import encoder_features, pixel_features, positive_views, projection_features, view_features
from nocollapse.eval.geometry import GeometryScores, class_separability, embedding_std, geometry_scores, rankme, singular_spectrum
from nocollapse.eval.knn import knn_accuracies, knn_accuracy, knn_predict
from nocollapse.eval.linear import linear_probe

__all__ = [
    "GeometryScores",
    "RepresentationScores",
    "class_separability",
    "embedding_std",
    "encoder_features",
    "format_geometry_table",
    "format_table",
    "geometry_scores",
    "knn_accuracies",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "pixel_features",
    "positive_views",
    "projection_features",
    "rankme",
    "score_features",
    "singular_spectrum",
    "view_features",
]
