"""GAT against DiT, presented: display tables, captions, figures, compare.json and compare.md.

The numbers come from `analysis.families` (`compare_families` gives a `Comparison`);
`write_comparison` writes them as Markdown, LaTeX (booktabs), CSV (`analysis.render`), PNG/PDF
figures (`analysis.compare_plots`), compare.json and compare.md, and logs them on the study's
parent run under `compare/`.  A sampling-speed table (measured with torch, so outside this
package: `orchestrator.compare_cmd`) can be attached as `Comparison.speed` before writing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.compare_plots import plot_sampling_compute, plot_training_compute
from analysis.contract import FLOP_CONVENTION as MAC_CONVENTION
from analysis.families import (FAMILIES, FAMILY_NAMES, FIT_AXES, NO_LAW, Comparison, as_float, better_family,
                               compare_families, nice_grid)
from analysis.fit import json_safe
from analysis.plots import axis_label
from analysis.render import (fmt_value, image_link, latex_table, log_to_parents, markdown_table, several_patches,
                             size_key, table_links, write_table_files)
from analysis.report import final_values, law_label

__all__ = ["FAMILIES", "FAMILY_NAMES", "Comparison", "better_family", "compare_families", "nice_grid",
           "write_comparison", "log_comparison"]  # the computation's names, for the callers of this module
ARTIFACT_DIR = "compare"
FLOP_CONVENTION = (f"{MAC_CONVENTION}; training MACs cumulative; sampling GFLOPs per image "
                   "= NFE x forward (x 2 with guidance), GAT = one G forward")


# --- display tables ----------------------------------------------------------------------------
def _num(value: Any, digits: int = 4) -> str:
    v = as_float(value)
    if not np.isfinite(v):
        return "∞" if v == np.inf else "—"
    return f"{v:.{digits}g}"


def _ci(value: Any, lo: Any, hi: Any, digits: int = 4, star: bool = False) -> str:
    text = _num(value, digits) + ("*" if star and np.isfinite(as_float(value)) else "")
    if np.isfinite(as_float(lo)) or np.isfinite(as_float(hi)):
        text += f" [{_num(lo, digits)}, {_num(hi, digits)}]"
    return text


def _with_trial(value: Any, trial: str, digits: int = 4) -> str:
    text = _num(value, digits)
    return f"{text} ({trial})" if trial and text != "—" else text


def fits_display(comp: Comparison) -> pd.DataFrame:
    rows = []
    for fam in FAMILIES:
        for x in FIT_AXES:
            fit = comp.fit(fam, x)
            if fit is None:
                continue
            rows.append({"family": FAMILY_NAMES[fam], "x": axis_label(x).split(" (")[0] + f" ({x})", "n": str(fit.n),
                         "a [95% CI]": _ci(fit.params["a"], *fit.ci["a"]),
                         "b [95% CI]": _ci(fit.params["b"], *fit.ci["b"]),
                         "R² (log)": _num(fit.r2_log, 3),
                         "x range": f"{_num(fit.x_range[0], 3)} – {_num(fit.x_range[1], 3)}",
                         "scaling law": law_label(fit)})
    return pd.DataFrame(rows, columns=["family", "x", "n", "a [95% CI]", "b [95% CI]", "R² (log)", "x range",
                                       "scaling law"])


def family_fits_frame(comp: Comparison) -> pd.DataFrame:
    """Raw per-family fit parameters (fits.csv)."""
    rows = []
    for fam in FAMILIES:
        for x in FIT_AXES:
            fit = comp.fit(fam, x)
            if fit is None:
                continue
            rows.append({"family": fam, "x": x, "y": comp.metric, "law": "a*x^-b", "n": fit.n,
                         "a": fit.params["a"], "a_lo": fit.ci["a"][0], "a_hi": fit.ci["a"][1],
                         "b": fit.params["b"], "b_lo": fit.ci["b"][0], "b_hi": fit.ci["b"][1], "r2_log": fit.r2_log,
                         "x_min": fit.x_range[0], "x_max": fit.x_range[1], "bootstrap": fit.n_boot_ok,
                         "scaling_law": fit.is_law, "no_law_reason": fit.no_law})
    return pd.DataFrame(rows, columns=["family", "x", "y", "law", "n", "a", "a_lo", "a_hi", "b", "b_lo", "b_hi",
                                       "r2_log", "x_min", "x_max", "bootstrap", "scaling_law", "no_law_reason"])


def equal_compute_display(comp: Comparison) -> pd.DataFrame:
    m = comp.metric
    rows = []
    for r in comp.equal_compute.to_dict(orient="records"):
        row = {"training MACs": _num(r["budget_macs"], 3)}
        for fam in FAMILIES:
            name = FAMILY_NAMES[fam]
            row[f"{name} {m}, fit [95% CI]"] = (_ci(r[f"{fam}_fit"], r[f"{fam}_fit_lo"], r[f"{fam}_fit_hi"],
                                                    star=bool(r[f"{fam}_extrapolated"])) if r[f"{fam}_law"]
                                                else NO_LAW)
            row[f"{name} best observed (trial)"] = _with_trial(r[f"{fam}_best"], r[f"{fam}_best_trial"])
        row["DiT / GAT (fit)"] = _num(r["dit_over_gat"], 3)
        row["better"] = r["better"] or "—"
        rows.append(row)
    cols = ["training MACs"] + [f"{FAMILY_NAMES[f]} {c}" for f in FAMILIES
                                for c in (f"{m}, fit [95% CI]", "best observed (trial)")]
    cols += ["DiT / GAT (fit)", "better"]
    return pd.DataFrame(rows, columns=cols)


def needed_display(comp: Comparison) -> pd.DataFrame:
    rows = []
    for r in comp.needed.to_dict(orient="records"):
        row = {f"target {comp.metric}": _num(r["target"])}
        for fam in FAMILIES:
            name = FAMILY_NAMES[fam]
            row[f"{name} MACs, fit [95% CI]"] = (_ci(r[f"{fam}_macs"], r[f"{fam}_macs_lo"], r[f"{fam}_macs_hi"], 3,
                                                     star=bool(r[f"{fam}_extrapolated"])) if r[f"{fam}_law"]
                                                 else NO_LAW)
            row[f"{name} first reached (trial)"] = _with_trial(r[f"{fam}_observed_macs"], r[f"{fam}_observed_trial"], 3)
        row["DiT / GAT (fit)"] = _num(r["dit_over_gat"], 3)
        rows.append(row)
    cols = [f"target {comp.metric}"] + [f"{FAMILY_NAMES[f]} {c}" for f in FAMILIES
                                        for c in ("MACs, fit [95% CI]", "first reached (trial)")] + ["DiT / GAT (fit)"]
    return pd.DataFrame(rows, columns=cols)


def sampling_display(comp: Comparison) -> pd.DataFrame:
    s = comp.sampling
    return pd.DataFrame({
        "family": s["family"].map(lambda f: FAMILY_NAMES.get(f, f)),
        "trial": s["run_name"].astype(str),
        "size": size_key(s, several_patches(comp.trials)),
        "NFE": s["nfe"].map(fmt_value),
        "sampling GFLOPs/image": s["sample_gflops"].map(lambda v: _num(v, 4)),
        comp.metric: s["value"].map(lambda v: _num(v, 4)),
    })


def trials_display(comp: Comparison) -> pd.DataFrame:
    """Every trial used: family, size, training MACs, health and the final metric with the diversity beside it."""
    t = comp.trials
    values = final_values(t, comp.metric, comp.diversity, [])
    out = pd.DataFrame({"family": t["family"].map(lambda f: FAMILY_NAMES.get(f, f)).to_numpy(),
                        "trial": t["run_name"].astype(str).to_numpy(),
                        "size": size_key(t, several_patches(t)).to_numpy(),
                        "training MACs": t["train_flops"].map(lambda v: _num(v, 3)).to_numpy()})
    if "health" in values:
        out["health"] = values["health"].map(fmt_value)
    for col in [comp.metric, *([comp.diversity] if comp.diversity else [])]:
        out[col] = values[col].map(lambda v: _num(v, 4))
    return out


def speed_display(speed: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "size": size_key(speed, several_patches(speed)),
        "family": speed["family"].map(lambda f: FAMILY_NAMES.get(f, f)),
        "NFE": speed["nfe"].map(fmt_value),
        "sampling GFLOPs/image": speed["sample_gflops"].map(lambda v: _num(v, 4)),
        "images/s": speed["images_per_s"].map(lambda v: _num(v, 4)),
        "ms/image": speed["ms_per_image"].map(lambda v: _num(v, 3)),
        "timing": speed["timing"].astype(str),
    })


def _captions(comp: Comparison) -> dict[str, str]:
    m = comp.metric
    boot = f"95 % percentile intervals from {comp.n_boot} bootstrap resamples of trials"
    return {
        "fits": f"Power laws {m} = a·x^-b per family, fitted to the final {m} of every usable trial against its "
                f"final training compute (MACs) and against the generator's forward GFLOPs per image; {boot}.",
        "equal_compute": f"{m} at equal training compute (MACs, 1 MAC = 1 FLOP). Fit: the family's power law in "
                         f"training MACs ({boot}; * = outside the family's range, extrapolated; '{NO_LAW}' = its "
                         f"exponent's CI includes 0 or has the wrong sign, so nothing is predicted from it). Best "
                         f"observed (measured): the best {m} any trial of the family had reached with at most that "
                         f"compute, over all its evaluations (the compute-efficient frontier; intermediate "
                         f"evaluations use fewer samples than final ones). Better: the family whose interval lies "
                         f"entirely on the better side of the other's; 'not separable' where the intervals overlap.",
        "needed": f"Training MACs each family needs to reach a target {m}: the inverse of its power law ({boot}; "
                  f"* = extrapolated beyond the family's trials; ∞ = replicates that do not improve with compute; "
                  f"'{NO_LAW}' = none is computed from a fit that is no law) and the compute at which its frontier "
                  f"first reached the target (— = never).",
        "trials": f"Final {m} of every trial used" + (f", with {comp.diversity} beside it (1 = as varied as the "
                                                      f"data, near 0 = mode collapse)" if comp.diversity else "")
                  + ".",
        "sampling": f"{m} against sampling compute per image (GFLOPs, 1 MAC = 1 FLOP): GAT = one generator "
                    f"forward (1 NFE); DiT = NFE × denoiser forward (× 2 with guidance), at every NFE of its final "
                    f"evaluation.",
    }


def _headline(comp: Comparison) -> list[str]:
    lines = []
    for fam in FAMILIES:
        fit = comp.fit(fam)
        if fit is not None:
            lo, hi = fit.ci["b"]
            ci = f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else ""
            law = f"{comp.metric} ≈ {fit.params['a']:.4g}·C^-{fit.params['b']:.3f}{ci}"
            if not fit.is_law:
                law = f"**no scaling law at this scale** ({fit.no_law}; fit b = {fit.params['b']:.3f}{ci})"
            lines.append(f"{FAMILY_NAMES[fam]}: {law} over training MACs C (n = {fit.n}, R² = {fit.r2_log:.3f})")
    return lines


def write_comparison(comp: Comparison, out_dir: Path, *, log_artifacts: bool = True) -> Path:
    """Tables (Markdown, LaTeX, CSV), figures (PNG, PDF), compare.json and compare.md in `out_dir`; logged on
    each study's parent run under `compare/` unless `log_artifacts` is False.  Returns compare.md."""
    out_dir = Path(out_dir)
    tables, plots = out_dir / "tables", out_dir / "plots"
    tables.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    captions = _captions(comp)
    displays = {"fits": fits_display(comp), "equal_compute": equal_compute_display(comp),
                "needed": needed_display(comp), "sampling": sampling_display(comp), "trials": trials_display(comp)}
    raws = {"fits": family_fits_frame(comp), "equal_compute": comp.equal_compute, "needed": comp.needed,
            "sampling": comp.sampling.drop(columns=["size_rank"]),
            "trials": final_values(comp.trials, comp.metric, comp.diversity,
                                   ["family", "trial_id", "run_id", "size", "patch", "train_flops"])}
    if comp.speed is not None:
        displays["speed"] = speed_display(comp.speed)
        raws["speed"] = comp.speed
        captions["speed"] = comp.speed_caption or "Sampling speed (images/s)."
    names = {"fits": "fits", "equal_compute": "equal_compute", "needed": "needed_compute", "sampling": "sampling",
             "trials": "trials", "speed": "speed"}
    for key, display in displays.items():
        files += write_table_files(tables / names[key], f"{captions[key]}\n\n{markdown_table(display)}",
                                   latex_table(display, captions[key], f"compare-{names[key]}"),
                                   lambda path, raw=raws[key]: raw.to_csv(path, index=False))
    figures = {"train": plot_training_compute(comp, plots / "compare_train_compute"),
               "sampling": plot_sampling_compute(comp, plots / "compare_sampling_compute")}
    files += [p for paths in figures.values() for p in paths]

    summary = {
        "studies": comp.studies, "tracking_uri": comp.tracking_uri, "metric": comp.metric,
        "lower_is_better": comp.lower_is_better, "flops_convention": FLOP_CONVENTION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "trials": comp.counts(),
        "bootstrap": {"resamples": comp.n_boot, "seed": comp.seed, "unit": "trial"},
        "fits": {fam: {x: f.to_dict() for x, f in comp.fits[fam].items()} for fam in FAMILIES},
        "skipped_fits": comp.skipped_fits,
        "equal_compute": _records(comp.equal_compute), "needed_compute": _records(comp.needed),
        "sampling": _records(comp.sampling.drop(columns=["size_rank"])),
        "speed": None if comp.speed is None else {"caption": comp.speed_caption, "rows": _records(comp.speed)},
        "trial_values": _records(raws["trials"]), "diversity_metric": comp.diversity,
        "keep_unhealthy": comp.keep_unhealthy, "unhealthy": _records(comp.unhealthy),
        "excluded": _records(comp.excluded), "notes": comp.notes,
    }
    (out_dir / "compare.json").write_text(json.dumps(json_safe(summary), indent=2, default=str))
    files.append(out_dir / "compare.json")
    path = out_dir / "compare.md"
    path.write_text(_markdown(comp, displays, captions, figures, out_dir))
    files.append(path)
    comp.files, comp.path = files, path
    if log_artifacts:
        log_comparison(comp, out_dir)
    return path


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of plain values (missing values as None)."""
    plain = frame.astype(object)
    return plain.where(plain.notna(), None).to_dict(orient="records")


def log_comparison(comp: Comparison, out_dir: Path) -> list[str]:
    """The files `write_comparison` wrote, on each study's parent run under compare/ (notes a study without one)."""
    logged, notes = log_to_parents(comp.tracking_uri, comp.studies, comp.parents, comp.files, out_dir, ARTIFACT_DIR,
                                   "comparison")
    comp.notes += notes
    comp.logged_to += logged
    return comp.logged_to


def _markdown(comp: Comparison, displays: dict[str, pd.DataFrame], captions: dict[str, str],
              figures: dict[str, list[Path]], out_dir: Path) -> str:
    counts = comp.counts()
    direction = "lower" if comp.lower_is_better else "higher"
    left_out = int((~comp.unhealthy["used"]).sum()) if len(comp.unhealthy) else 0
    md = [f"# GAT vs DiT: {', '.join(comp.studies)}\n",
          f"- metric: **{comp.metric}** ({direction} is better); final value = last evaluation of each trial"
          + (f"; diversity: **{comp.diversity}** (1 = as varied as the data, near 0 = mode collapse)"
             if comp.diversity else ""),
          f"- trials used: GAT {counts['gat']}, DiT {counts['dit']}"
          + (f"; {len(comp.excluded)} excluded" if len(comp.excluded) else "")
          + (f" ({left_out} as unhealthy: see Excluded trials)" if left_out else "")
          + ("; unhealthy trials kept (--keep-unhealthy)" if comp.keep_unhealthy and len(comp.unhealthy) else ""),
          f"- compute convention: {FLOP_CONVENTION}",
          f"- uncertainty: 95 % percentile intervals from {comp.n_boot} bootstrap resamples of trials "
          f"(seed {comp.seed})",
          f"- MLflow: `{comp.tracking_uri}`\n"]
    head = _headline(comp)
    if head:
        md += ["**Fitted laws**\n", *[f"- {h}" for h in head], ""]
    md += ["## Metric vs training compute\n", captions["fits"] + "\n", markdown_table(displays["fits"]),
           table_links("fits"),
           image_link(figures["train"], out_dir, f"{comp.metric} vs training compute, GAT and DiT")]
    md += ["## Trials (final values)\n", captions["trials"] + "\n", markdown_table(displays["trials"]),
           table_links("trials")]
    md += ["## Equal training compute\n", captions["equal_compute"] + "\n", markdown_table(displays["equal_compute"]),
           table_links("equal_compute")]
    md += ["## Training compute needed for a target\n", captions["needed"] + "\n", markdown_table(displays["needed"]),
           table_links("needed_compute")]
    md += ["## Metric vs sampling compute per image\n", captions["sampling"] + "\n",
           image_link(figures["sampling"], out_dir, f"{comp.metric} vs sampling compute per image"),
           markdown_table(displays["sampling"]), table_links("sampling")]
    md.append("## Sampling speed\n")
    if "speed" in displays:
        md += [captions["speed"] + "\n", markdown_table(displays["speed"]), table_links("speed")]
    else:
        md.append("_not measured (--no-speed)_\n")
    note = comp.health_note
    if len(comp.excluded):
        md += ["## Excluded trials\n", *([note + "\n"] if note else []), markdown_table(comp.excluded.map(fmt_value))]
    if comp.notes:
        md += ["## Notes\n", *[f"- {n}" for n in comp.notes], ""]
    return "\n".join(md) + "\n"
