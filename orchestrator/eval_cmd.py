"""`gat-study eval MODEL_FILE --metric ...` and `gat-study ref-stats DATASET --extractor ...`.

`evaluate_checkpoint` scores the model file a trial writes at its end (`final_model.pt`, read by
`gat_core.sampler.read_model_file`) on any metrics (`fid`, `fd_dinov2`, `fd_classifier`, `kid_<x>`,
`precision_<x>`, `recall_<x>`, `fid_inf`, ...), with the same sampler (`gat_core.families`), decoding
and label seed as the trial's own evaluation:

- GAN trials, pixel or latent space, with optional truncation psi;
- DiT trials, pixel or latent space, at the trial's `sample_steps` or `nfe`.

Training checkpoints (`checkpoints/ckpt-*.pt`) hold the EMA weights too and are accepted as well.
Latent-space trials need the encoded latents folder of their config (for the VAE scaling factor
and the reference images) and the VAE (`eval.vae` or the encoder's).

`reference_stats_cmd` writes the feature statistics of a dataset as an .npz with `mu`, `sigma` and
`n`, loadable as `eval.reference_stats`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gat_core.atomic import write_atomic
from gat_core.config import DATASET_NAMES, DataConfig, EvalConfig
from gat_core.metrics.names import extractors_of, parse_metric

DEFAULT_CACHE = Path(".gat-study-cache")  # torch is imported by the commands, not by the CLI's parser


def _eval_config(base: EvalConfig, metrics: list[str], **overrides) -> EvalConfig:
    if not metrics:
        raise ValueError("metric: give at least one metric (e.g. --metric fid)")
    fields = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update={"metric": parse_metric(metrics[0]).name,  # exactly the metrics asked for
                                   "extra_metrics": [parse_metric(m).name for m in metrics[1:]], "diversity": False,
                                   **fields})


def default_cache(model_path: Path) -> Path:
    """The study's cache (`<output_dir>/cache`, shared with its trials) for `<output_dir>/trials/<id>/final_model.pt`,
    else `.gat-study-cache` in the working directory."""
    parents = Path(model_path).resolve().parents
    if len(parents) > 2 and parents[1].name == "trials" and (parents[2] / "cache").is_dir():
        return parents[2] / "cache"
    return DEFAULT_CACHE


def evaluate_checkpoint(model_path: Path, metrics: list[str], num_samples: int, batch_size: int = 250,
                        cache_dir: Path | None = None, *, inception_weights: Path | None = None,
                        dinov2_weights: Path | None = None, reference_stats: Path | None = None,
                        truncation: float | None = None, nfe: int | None = None, device: str = "cpu",
                        seed: int = 1234) -> dict[str, float]:
    """`{metric: value, ..., "eval_samples": n}` for the model in `model_path` (see the module docstring).

    Weights paths default to the trial config's `eval.*` fields, then to the environment variables;
    `reference_stats` (e.g. an ADM reference batch) replaces the first metric's reference statistics.
    Labels come from a generator seeded with `seed` (1234 is the trials' own), noise from another.
    `cache_dir` (classifier, reference statistics) defaults to `default_cache(model_path)`.
    """
    import torch

    from gat_core.families import sampler_from_config
    from gat_core.metrics.evaluator import build_evaluator
    from gat_core.sampler import identity, read_model_file

    state, cfg = read_model_file(Path(model_path))
    eval_cfg = _eval_config(cfg.eval, list(metrics), inception_weights=inception_weights,
                            dinov2_weights=dinov2_weights, reference_stats=reference_stats, truncation=truncation)
    dev = torch.device(device)
    decode, dataset = identity, None
    needed = extractors_of(eval_cfg.final_metrics)
    primary = parse_metric(eval_cfg.metric).extractor
    per_sample = any(parse_metric(m).per_sample for m in eval_cfg.final_metrics)
    need_data = eval_cfg.reference_stats is None or needed != [primary] or "classifier" in needed or per_sample
    if cfg.dataset.latents is not None:
        from gat_core.latents import load_latents
        from gat_core.sampler import latent_decoder

        latent = load_latents(cfg.dataset.latents)
        dataset = latent.pixels
        decode = latent_decoder(latent, eval_cfg.vae, dev, dataset.channels if dataset is not None else cfg.dataset.channels)
    elif need_data:
        from gat_core.data import load_dataset

        dataset = load_dataset(cfg.dataset)
    num_classes = int(state.get("num_classes") or (dataset.num_classes if dataset is not None else 0))
    if num_classes < 1:
        raise ValueError(f"model file {model_path}: no class count")
    evaluator, _ = build_evaluator(eval_cfg, dataset, Path(cache_dir or default_cache(model_path)), device=dev)
    noise = torch.Generator().manual_seed(seed + 1)
    sampler = sampler_from_config(cfg, num_classes, dev, state, decode, truncation=eval_cfg.truncation)

    @torch.no_grad()
    def images(labels: torch.Tensor) -> torch.Tensor:
        return sampler.images(labels, noise, nfe)

    out = evaluator(images, eval_cfg.final_metrics, num_samples, batch_size, num_classes, seed=seed)
    out.update(sampler.eval_settings())
    out["step"] = float(state.get("step", 0))
    return out


def reference_stats_cmd(dataset_cfg: DataConfig, extractor: str, out: Path, cache_dir: Path = DEFAULT_CACHE, *,
                        inception_weights: Path | None = None, dinov2_weights: Path | None = None,
                        classifier_epochs: int = 8, batch_size: int = 250, device: str = "cpu") -> Path:
    """Write the `extractor` feature statistics of the dataset to `out` (.npz: mu, sigma, n); returns `out`.

    Uses (and fills) the same cache as the trials, keyed by the dataset's content hash and the
    extractor's weights, so a later trial on the same data reuses the pass.
    """
    import torch

    from gat_core.data import load_dataset
    from gat_core.metrics.extractors import build_extractor
    from gat_core.metrics.frechet import reference

    if extractor not in ("inception", "dinov2", "classifier"):
        raise ValueError(f"extractor: unknown {extractor!r}; expected inception, dinov2 or classifier")
    eval_cfg = EvalConfig(inception_weights=inception_weights, dinov2_weights=dinov2_weights,
                          classifier_epochs=classifier_epochs)
    if dataset_cfg.latents is not None:
        from gat_core.latents import load_latents

        dataset = load_latents(dataset_cfg.latents).pixels
        if dataset is None:
            raise ValueError(f"dataset.latents: {dataset_cfg.latents} was encoded without its images")
    else:
        dataset = load_dataset(dataset_cfg)
    feature_extractor, _ = build_extractor(extractor, eval_cfg, dataset, Path(cache_dir), torch.device(device))
    reference(feature_extractor, dataset, Path(cache_dir), batch_size)
    cached = Path(cache_dir) / f"ref-{dataset.fingerprint()}-{feature_extractor.key}.npz"
    return write_atomic(out, cached.read_bytes())


# --- CLI ------------------------------------------------------------------------------------------

def cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(args.checkpoint, args.metric, args.num_samples, args.batch_size, args.cache_dir,
                                 inception_weights=args.inception_weights, dinov2_weights=args.dinov2_weights,
                                 reference_stats=args.reference_stats, truncation=args.truncation, nfe=args.nfe,
                                 device=args.device, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        n = int(result["eval_samples"])
        for key, value in result.items():
            if key not in ("eval_samples", "step"):
                print(f"{key:<24} {value:.6g}" + ("" if key.startswith("eval_") else f"   ({n} samples)"))
    return 0


def cmd_ref_stats(args: argparse.Namespace) -> int:
    data_cfg = DataConfig(name=args.dataset, resolution=args.resolution, path=args.path, latents=args.latents,
                          **({"size": args.size} if args.size else {}))
    path = reference_stats_cmd(data_cfg, args.extractor, args.out, args.cache_dir,
                               inception_weights=args.inception_weights, dinov2_weights=args.dinov2_weights,
                               classifier_epochs=args.classifier_epochs, batch_size=args.batch_size, device=args.device)
    print(f"wrote {args.extractor} reference statistics of {args.dataset} to {path}; use it with "
          f"eval.reference_stats: {path}")
    return 0


def add_parsers(sub) -> None:
    """Register `eval` and `ref-stats` on the CLI's subparsers (`sub = parser.add_subparsers(...)`)."""
    p = sub.add_parser("eval", help="score a trial's model file (final_model.pt) on FID, FD_DINOv2, KID, ...")
    p.add_argument("checkpoint", type=Path, help="final_model.pt of a trial (GAN or DiT)")
    p.add_argument("--metric", action="append", required=True,
                   help="metric name, repeatable: fid, fd_dinov2, fd_classifier, kid_<x>, precision_<x>, recall_<x>, "
                        "fid_inf (<x>: inception, dinov2, classifier)")
    p.add_argument("--num-samples", type=int, default=10000, help="generated samples (papers: 50000)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--inception-weights", type=Path, help="default: the trial's eval.inception_weights, "
                                                          "$GAT_STUDY_INCEPTION_WEIGHTS")
    p.add_argument("--dinov2-weights", type=Path, help="default: eval.dinov2_weights, $GAT_STUDY_DINOV2_WEIGHTS")
    p.add_argument("--reference-stats", type=Path, help=".npz with mu/sigma (e.g. an ADM reference batch) for the "
                                                         "first metric")
    p.add_argument("--truncation", type=float, help="GAN truncation psi (default: the trial's eval.truncation)")
    p.add_argument("--nfe", type=int, help="DiT sampling steps (default: the trial's sample_steps)")
    p.add_argument("--cache-dir", type=Path, help="classifier and reference statistics cache (default: the study's "
                                                   "<output_dir>/cache next to trials/, else .gat-study-cache)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("ref-stats", help="write a dataset's reference feature statistics (.npz with mu, sigma)")
    p.add_argument("dataset", choices=DATASET_NAMES)
    p.add_argument("--extractor", required=True, choices=["inception", "dinov2", "classifier"])
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--path", type=Path, help="root of a folder dataset (one subfolder per class)")
    p.add_argument("--latents", type=Path, help="encoded latents folder (its source images are used)")
    p.add_argument("--size", type=int, help="number of images (shapes)")
    p.add_argument("--inception-weights", type=Path)
    p.add_argument("--dinov2-weights", type=Path)
    p.add_argument("--classifier-epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_ref_stats)
