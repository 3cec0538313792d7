"""Several metrics from one generation pass: the evaluation a trial, `gat-study eval` and the tests share.

Samples are generated batch by batch and never held all at once: every batch goes through each
extractor the requested metrics need, into float64 streaming statistics (Fréchet distances); only
the metrics that need per-sample features (KID, precision/recall, FD∞) keep the feature vectors
(N x d floats, not images).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gat_core.data import sample_labels
from gat_core.metrics.frechet import FeatureExtractor, frechet_distance, reference
from gat_core.metrics.names import extractors_of, parse_metric
from gat_core.metrics.names import REAL_FEATURE_KINDS
from gat_core.metrics.scores import fd_infinity, kid, precision_recall, within_class_spread
from gat_core.metrics.stats import ReferenceBatch, RunningStats

log = logging.getLogger(__name__)


@dataclass
class Reference:
    """What generated features are compared with, for one extractor."""

    stats: RunningStats
    features: np.ndarray | None = None  # real feature vectors, for the per-sample metrics
    source: str = ""
    class_spread: float | None = None  # within-class spread of the dataset's features (diversity_<x>)


class Evaluator:
    """Extractors and their references; `__call__` scores a generator on a list of metrics."""

    def __init__(self, extractors: dict[str, FeatureExtractor], references: dict[str, Reference],
                 kid_subsets: int = 100, kid_subset_size: int = 1000, pr_k: int = 3, fd_inf_points: int = 15) -> None:
        for name, ext in extractors.items():
            if name not in references:
                raise ValueError(f"evaluator: no reference for extractor {name!r}")
            if references[name].stats.dim != ext.dim:
                raise ValueError(f"reference statistics of {name} ({references[name].source}) are "
                                 f"{references[name].stats.dim}-d, but {name} features are {ext.dim}-d")
        self.extractors, self.references = extractors, references
        self.kid_subsets, self.kid_subset_size, self.pr_k, self.fd_inf_points = kid_subsets, kid_subset_size, pr_k, fd_inf_points

    def check(self, metrics: Sequence[str]) -> None:
        for name in metrics:
            spec = parse_metric(name)
            if spec.extractor not in self.extractors:
                raise ValueError(f"metric {name}: the evaluator has no {spec.extractor} extractor")
            if spec.kind in ("kid", "precision", "recall") and self.references[spec.extractor].features is None:
                raise ValueError(f"metric {name}: no real {spec.extractor} features to compare with")
            if spec.kind == "diversity" and self.references[spec.extractor].class_spread is None:
                raise ValueError(f"metric {name}: no labelled real {spec.extractor} features to compare with")

    @torch.no_grad()
    def __call__(self, generate: Callable[[Tensor], Tensor], metrics: Sequence[str], num_samples: int,
                 batch_size: int, num_classes: int, seed: int = 1234) -> dict[str, float]:
        """`{metric: value, ..., "eval_samples": num_samples}` (plus `kid_<x>_std`).

        `generate` maps CPU int64 labels to images in [-1, 1]; labels are uniform from a generator
        seeded with `seed` (so the same seed gives the same labels).
        Non-finite images (a diverged generator) give NaN for every metric.
        """
        if num_samples < 2:
            raise ValueError(f"num_samples: need at least 2 samples for a covariance, got {num_samples}")
        metrics = list(dict.fromkeys(metrics))
        self.check(metrics)
        specs = [parse_metric(m) for m in metrics]
        needed = extractors_of(metrics)
        keep = {s.extractor for s in specs if s.per_sample}
        stats = {e: RunningStats(self.extractors[e].dim) for e in needed}
        kept: dict[str, list[np.ndarray]] = {e: [] for e in keep}
        label_chunks: list[np.ndarray] = []
        g = torch.Generator().manual_seed(seed)
        out: dict[str, float] = {}
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            labels = sample_labels(num_classes, n, g)
            label_chunks.append(labels.numpy())
            images = generate(labels)
            if images.ndim != 4 or images.shape[0] != n:
                raise ValueError(f"generate: expected {n} images [N, C, H, W] for {n} labels, got {list(images.shape)}")
            if not torch.isfinite(images).all():
                log.warning("%s: generator produced non-finite images; returning NaN", ", ".join(metrics))
                return {**{m: math.nan for m in metrics}, "eval_samples": float(num_samples)}
            for e in needed:
                feats = self.extractors[e].features(images)
                stats[e].update(feats)
                if e in keep:
                    kept[e].append(feats.float().numpy())
        features = {e: np.concatenate(kept[e]) for e in keep}
        pr_cache: dict[str, tuple[float, float]] = {}
        for spec in specs:
            ref = self.references[spec.extractor]
            if spec.kind == "fd":
                s = stats[spec.extractor]
                out[spec.name] = frechet_distance(s.mean, s.cov, ref.stats.mean, ref.stats.cov)
            elif spec.kind == "fd_inf":
                out[spec.name] = fd_infinity(features[spec.extractor], ref.stats, points=self.fd_inf_points)[0]
            elif spec.kind == "diversity":
                spread = within_class_spread(features[spec.extractor], np.concatenate(label_chunks))
                out[spec.name] = spread / ref.class_spread
            elif spec.kind == "kid":
                mean, std = kid(features[spec.extractor], ref.features, self.kid_subsets, self.kid_subset_size)
                out[spec.name], out[f"{spec.name}_std"] = mean, std
            else:
                if spec.extractor not in pr_cache:
                    gen = features[spec.extractor]
                    real = ref.features
                    if len(real) > len(gen):  # equal set sizes, as in the paper; a fixed random subset of the reals
                        real = real[np.random.default_rng(0).choice(len(real), len(gen), replace=False)]
                    pr_cache[spec.extractor] = precision_recall(gen, real, k=self.pr_k)
                precision, recall = pr_cache[spec.extractor]
                out[spec.name] = precision if spec.kind == "precision" else recall
        out["eval_samples"] = float(num_samples)
        return out


def build_evaluator(eval_cfg, dataset, cache_dir: Path, device: str | torch.device = "cpu",
                    metrics: Sequence[str] | None = None, batch_size: int = 500) -> tuple[Evaluator, float]:
    """The extractors and references `metrics` need (default: the EvalConfig's primary and extra metrics).

    References come from `dataset` (cached per content hash and extractor; None when it is not
    available, which is fine if nothing needs it), except that
    `eval_cfg.reference_stats` (e.g. an ADM reference batch) replaces the statistics of the primary
    metric's extractor; its images, when it has them, also give that extractor's real features.
    Returns the evaluator and the classifier's held-out accuracy (NaN when no metric uses it).
    """
    from gat_core.metrics.extractors import build_extractor

    metrics = list(metrics) if metrics is not None else eval_cfg.final_metrics
    needs_real_features = {parse_metric(m).extractor for m in metrics if parse_metric(m).kind in REAL_FEATURE_KINDS}
    needs_spread = {parse_metric(m).extractor for m in metrics if parse_metric(m).kind == "diversity"}
    primary = parse_metric(eval_cfg.metric).extractor
    extractors: dict[str, FeatureExtractor] = {}
    references: dict[str, Reference] = {}
    accuracy = math.nan
    def data():
        if dataset is None:
            raise ValueError(f"{', '.join(metrics)}: the {name} reference needs the training dataset, which is not "
                             "available here")
        return dataset

    for name in extractors_of(metrics):
        extractor, acc = build_extractor(name, eval_cfg, data() if name in ("classifier", "pixels") else dataset,
                                         cache_dir, device)
        if acc is not None:
            accuracy = acc
        extractors[name] = extractor
        want_feats = name in needs_real_features
        if eval_cfg.reference_stats is not None and name == primary:
            batch = ReferenceBatch(eval_cfg.reference_stats)
            if batch.dim != extractor.dim:
                raise ValueError(f"eval.reference_stats: {batch.path} holds {batch.dim}-d statistics, but the "
                                 f"{name} features of {eval_cfg.metric} are {extractor.dim}-d")
            feats = None
            if want_feats:
                source = batch if batch.num_images else data()
                feats = reference(extractor, source, cache_dir, batch_size, features=True)[1]
            references[name] = Reference(batch.stats, feats, str(batch.path))
        else:
            stats, feats = reference(extractor, data(), cache_dir, batch_size, features=want_feats)
            references[name] = Reference(stats, feats, f"dataset {getattr(dataset, 'name', '?')}")
        if name in needs_spread:  # the dataset's own labelled features, whatever the FD reference is
            real = reference(extractor, data(), cache_dir, batch_size, features=True)[1]
            references[name].class_spread = within_class_spread(real, data().labels.numpy())
    return Evaluator(extractors, references), accuracy
