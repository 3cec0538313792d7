"""Metric names: every name says its feature extractor (torch-free, so configs can validate them).

Grammar (`parse_metric`):

- `fid`: Fréchet distance in Inception-v3 pool_3 features (the FID papers report; Inception only);
- `fd_<extractor>`: Fréchet distance in another extractor's features (`fd_dinov2`, `fd_classifier`);
- `fid_inf`, `fd_inf_<extractor>`: FID∞ / FD∞ (Chong & Forsyth 2020), FD_N fitted over several N and
  extrapolated to 1/N = 0;
- `kid_<extractor>`: kernel distance (unbiased MMD², cubic polynomial kernel, averaged over subsets);
- `precision_<extractor>`, `recall_<extractor>`: k-NN manifold precision and recall (Kynkäänniemi et al. 2019);
- `diversity_<extractor>`: within-class spread of the generated features over that of the real data,
  sum_i ||f_i - mean_{class(i)}||^2 / N of the samples divided by the same of the dataset (1 = as varied
  within each class as the data, near 0 = every z of a class gives the same image: mode collapse).
  Trials log `diversity_pixels` beside the quality metric at every evaluation (`EvalConfig.diversity_metric`):
  in pixels, because the learned extractors are made to ignore the pose and placement a collapsed
  generator stops varying.

Extractors: `inception`, `dinov2`, `classifier` (below) and `pixels` (the images themselves, pooled to at most
32 x 32; for `diversity_pixels` only).

Extractors: `inception` (TF-Inception port of torch-fidelity), `dinov2` (DINOv2 ViT-*/14), `classifier`
(the project's own network, trained on the study dataset).  Values of different extractors are on
different scales and must never be compared.
"""

from __future__ import annotations

from dataclasses import dataclass

EXTRACTORS = ("inception", "dinov2", "classifier", "pixels")
KINDS = ("fd", "fd_inf", "kid", "precision", "recall", "diversity")
PER_SAMPLE_KINDS = frozenset({"fd_inf", "kid", "precision", "recall", "diversity"})  # need the features, not only mean/cov
REAL_FEATURE_KINDS = frozenset({"kid", "precision", "recall", "diversity"})  # need the real features too
HIGHER_IS_BETTER_KINDS = frozenset({"precision", "recall", "diversity"})
GRAMMAR = ("fid, fid_inf, fd_<x>, fd_inf_<x>, kid_<x>, precision_<x>, recall_<x>, diversity_<x> with <x> one of "
           + ", ".join(EXTRACTORS) + " (fd_/fd_inf_ take dinov2 or classifier: the Inception ones are fid and fid_inf)")


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric name: what is computed (`kind`) in whose features (`extractor`)."""

    name: str
    kind: str
    extractor: str

    @property
    def per_sample(self) -> bool:
        """True when the metric needs every generated feature vector, not only their mean and covariance."""
        return self.kind in PER_SAMPLE_KINDS

    @property
    def higher_is_better(self) -> bool:
        return self.kind in HIGHER_IS_BETTER_KINDS


def metric_name(kind: str, extractor: str) -> str:
    """The canonical name of `kind` in `extractor`'s features (`fd`, `inception` -> `fid`)."""
    if kind not in KINDS or extractor not in EXTRACTORS:
        raise ValueError(f"metric: unknown kind {kind!r} or extractor {extractor!r}")
    if extractor == "inception" and kind in ("fd", "fd_inf"):
        return "fid" if kind == "fd" else "fid_inf"
    return f"{kind}_{extractor}"


def parse_metric(name: str) -> MetricSpec:
    """`fid` -> (fd, inception), `kid_classifier` -> (kid, classifier), ...; ValueError naming the grammar."""
    text = str(name).strip()
    if text == "fid":
        return MetricSpec(text, "fd", "inception")
    if text == "fid_inf":
        return MetricSpec(text, "fd_inf", "inception")
    for kind in ("fd_inf", "fd", "kid", "precision", "recall", "diversity"):  # fd_inf before fd: longest prefix first
        prefix = f"{kind}_"
        if text.startswith(prefix):
            extractor = text[len(prefix):]
            if extractor not in EXTRACTORS:
                break
            if extractor == "pixels" and kind != "diversity":
                raise ValueError(f"metric: {text!r}: pixel features serve diversity_pixels only (a distance in "
                                 "pixels says nothing about image quality)")
            if extractor == "inception" and kind in ("fd", "fd_inf"):
                raise ValueError(f"metric: {text!r} is called {metric_name(kind, extractor)!r} (FID is the Inception "
                                 f"Fréchet distance)")
            return MetricSpec(text, kind, extractor)
    raise ValueError(f"metric: unknown metric {text!r}; expected one of {GRAMMAR}")


def extractors_of(names: list[str] | tuple[str, ...]) -> list[str]:
    """The extractors a list of metric names needs, in first-use order."""
    seen: list[str] = []
    for name in names:
        extractor = parse_metric(name).extractor
        if extractor not in seen:
            seen.append(extractor)
    return seen
