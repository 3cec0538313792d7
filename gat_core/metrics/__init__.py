"""Sample-quality metrics: FID / FD, KID, precision/recall and FID∞ in the features of pluggable extractors.

Attributes are imported lazily, so `gat_core.metrics.names` (the torch-free metric grammar that
the configs validate against) can be imported without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClassifierExtractor": "classifier", "SmallCNN": "classifier", "load_or_train_classifier": "classifier",
    "train_classifier": "classifier",
    "FeatureExtractor": "frechet", "frechet_distance": "frechet", "reference_stats": "frechet",
    "RunningStats": "stats", "ReferenceBatch": "stats",
    "InceptionExtractor": "extractors", "DINOv2Extractor": "extractors", "build_extractor": "extractors",
    "kid": "scores", "precision_recall": "scores", "fd_infinity": "scores",
    "Evaluator": "evaluator", "build_evaluator": "evaluator",
    "MetricSpec": "names", "parse_metric": "names", "metric_name": "names",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
