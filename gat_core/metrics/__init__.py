"""Sample-quality metrics: Fréchet distance in the features of a pluggable extractor."""

from gat_core.metrics.classifier import ClassifierExtractor, SmallCNN, load_or_train_classifier, train_classifier
from gat_core.metrics.frechet import FeatureExtractor, fd_of_generator, frechet_distance, reference_stats
from gat_core.metrics.stats import RunningStats

__all__ = [
    "ClassifierExtractor", "FeatureExtractor", "RunningStats", "SmallCNN", "fd_of_generator", "frechet_distance",
    "load_or_train_classifier", "reference_stats", "train_classifier",
]
