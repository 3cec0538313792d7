"""The claims a scaling study is run to test (issue 16, cpu-scaling), per family, from MLflow alone.

* (a) **correlation**: Pearson r of log compute (GFLOPs per image `gflops_g`, and training compute
  `train_flops`) and log final metric, with a 95 % bootstrap interval over trials (the paper: r = -0.95);
* (b) **larger is better at the same step**: over all pairs of trials of different `gflops_g` and the same
  seed, at every evaluation step common to both after the first 10 % of training, the fraction of
  comparisons the larger model wins, overall and per pair of sizes, with a bootstrap over seeds;
* (c) **plateau of the smallest model**: its seed-mean metric at every intermediate evaluation after step 0,
  and its relative improvement from the middle third's mean to the last third's ("near
  plateau" below 10 %); also for a study of one model size;
* (d) whether the held-out prediction of the largest model (`analyze --holdout K`, `analysis.predict`)
  held, in one line per family.

Evaluations are compared only at equal sample counts.  The trainer scores intermediate evaluations
(every `eval.interval` steps, step 0 included, never at the last step) on `eval.num_samples` samples and
the final one (at the trial's last step) on `eval.final_samples`; a Fréchet distance depends on the sample
count, so the two are never compared with each other.  The store says which is which: every evaluation
logs `eval_samples` (its sample count) at its step beside the metric, and the final one is at the trial's
`final_step` (tag).  Stores without `eval_samples` fall back on the params: `eval.final_samples` at the
final step, `eval.num_samples` elsewhere.

Bootstraps use `analysis.fit`'s resampling (`bootstrap_indices`, `bootstrap_counts`, `percentile_interval`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from analysis.fit import bootstrap_counts, bootstrap_indices, correlations, json_safe, percentile_interval
from analysis.render import fmt_interval, fmt_num, fmt_value, several_patches, size_key
from analysis.scaling import families, variants

LEVEL = 0.95
CORRELATION_AXES = ("gflops_g", "train_flops")
WARMUP_FRACTION = 0.1     # (b): comparisons only at steps > 0.1 x total steps
PLATEAU_WINDOW = 1 / 3    # (c): the relative improvement from the middle third of training to the last
PLATEAU_THRESHOLD = 0.10  # (c): "near plateau" below 10 %
SAMPLES_KEY = "eval_samples"
PAPER_R = -0.95


def claim_groups(usable: pd.DataFrame, switches: Iterable[str]) -> Iterator[tuple[str, pd.DataFrame]]:
    """(group, trials): per variant of the switches, overall and per patch size (a single model size has no
    compute axis, so no claim), named as `analysis.scaling` names its fits."""
    for variant, vtrials in variants(usable, switches):
        for family, ftrials in families(vtrials):
            if family.startswith("size="):
                continue
            yield (family if variant == "all" else (variant if family == "all" else f"{variant}; {family}")), ftrials


# --- the evaluations ----------------------------------------------------------------------------------------
def total_steps(trials: pd.DataFrame) -> pd.Series:
    """Steps each trial was asked for: the `steps` param (resolved, budgets included), else `train.steps`, else
    the step it finished at; the step it finished at where that is more, since a trial extended by a later `run`
    keeps the params of its first (MLflow params never change)."""
    out = pd.Series(np.nan, index=trials.index)
    for col in ("steps", "train.steps"):
        if col in trials:
            out = out.fillna(pd.to_numeric(trials[col], errors="coerce"))
    if "final_step" in trials:
        out = pd.Series(np.fmax(out.to_numpy(float), pd.to_numeric(trials["final_step"], errors="coerce")
                                .to_numpy(float)), index=trials.index)
    return out


def evaluations(history: pd.DataFrame, trials: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str]:
    """Every finite evaluation of `metric` of `trials`: run_id, step, value, samples (its sample count), final
    (the trial's last step), total (its steps), seed and gflops_g; and where the sample counts came from."""
    info = trials.set_index("run_id")
    rows = history[(history["key"] == metric) & history["run_id"].isin(info.index)]
    rows = rows[np.isfinite(rows["value"].astype(float))][["run_id", "step", "value"]].copy()
    counts = history[(history["key"] == SAMPLES_KEY) & history["run_id"].isin(info.index)]
    counts = counts.rename(columns={"value": "samples"})[["run_id", "step", "samples"]]
    rows = rows.merge(counts, on=["run_id", "step"], how="left")
    final_step = pd.to_numeric(info["final_step"], errors="coerce") if "final_step" in info else \
        pd.Series(np.nan, index=info.index)
    last = rows.groupby("run_id")["step"].max()
    final_step = final_step.fillna(last)
    rows["final"] = rows["step"].to_numpy() == rows["run_id"].map(final_step).to_numpy()
    source = f"the `{SAMPLES_KEY}` metric logged with each evaluation"
    missing = rows["samples"].isna()
    if missing.any():
        by_param = {"final": "eval.final_samples", "intermediate": "eval.num_samples"}
        fallback = [pd.to_numeric(info.get(by_param["final" if f else "intermediate"],
                                           pd.Series(np.nan, index=info.index)), errors="coerce").get(r, np.nan)
                    for r, f in zip(rows.loc[missing, "run_id"], rows.loc[missing, "final"])]
        rows.loc[missing, "samples"] = fallback
        source += (f" ({int(missing.sum())} evaluations without it: eval.final_samples at the final step, "
                   "eval.num_samples elsewhere)")
    seed = info["train.seed"] if "train.seed" in info else pd.Series(None, index=info.index, dtype=object)
    rows["seed"] = rows["run_id"].map(seed.map(fmt_value))
    rows["total"] = rows["run_id"].map(total_steps(info.reset_index()).set_axis(info.index))
    rows["gflops_g"] = rows["run_id"].map(pd.to_numeric(info["gflops_g"], errors="coerce"))
    return rows.reset_index(drop=True), source


# --- (a) correlation --------------------------------------------------------------------------------------
def _pearson_rows(lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Pearson r of each row of (lx, ly); NaN where either does not vary."""
    dx = lx - lx.mean(axis=-1, keepdims=True)
    dy = ly - ly.mean(axis=-1, keepdims=True)
    sxx, syy = (dx * dx).sum(axis=-1), (dy * dy).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((sxx > 1e-12) & (syy > 1e-24), (dx * dy).sum(axis=-1) / np.sqrt(sxx * syy), np.nan)


def correlation_claim(trials: pd.DataFrame, x: str, *, n_boot: int, rng: np.random.Generator) -> dict[str, Any]:
    """Pearson r of log x and log final metric with its 95 % trial-bootstrap interval (replicates in which x or the
    metric does not vary are dropped)."""
    data = trials[[x, "metric_value"]].apply(pd.to_numeric, errors="coerce").dropna()
    data = data[(data[x] > 0) & (data["metric_value"] > 0)]
    out: dict[str, Any] = {"x": x, "n": len(data), "n_x_values": int(data[x].nunique())}
    if len(data) < 3 or data[x].nunique() < 2:
        return {**out, "r": math.nan, "ci95": [math.nan, math.nan], "valid_resamples": 0,
                "skipped": f"{len(data)} trials at {data[x].nunique()} {x} values: a correlation needs 3 trials at "
                           "2 values"}
    lx, ly = np.log(data[x].to_numpy(float)), np.log(data["metric_value"].to_numpy(float))
    corr = correlations(data[x].to_numpy(float), data["metric_value"].to_numpy(float))
    idx = bootstrap_indices(len(lx), n_boot, rng)
    boot = _pearson_rows(lx[idx], ly[idx]) if n_boot else np.empty(0)
    return {**out, "r": corr["pearson_log_r"], "p": corr["pearson_log_p"], "spearman_rho": corr["spearman_rho"],
            "ci95": list(percentile_interval(boot, LEVEL)), "valid_resamples": int(np.isfinite(boot).sum())}


# --- (b) larger is better at the same step ---------------------------------------------------------------------
def comparisons(evals: pd.DataFrame, lower_is_better: bool) -> pd.DataFrame:
    """Every comparison of two trials of the same seed and different gflops_g at a step both evaluated with the same
    number of samples, after the first `WARMUP_FRACTION` of both trials' training: run_small, run_large, seed,
    step, kind (`final`: both trials' final evaluation; `intermediate` otherwise), larger_better."""
    late = evals[evals["step"] > WARMUP_FRACTION * evals["total"]]
    cols = ["run_id", "seed", "step", "samples", "value", "final", "gflops_g"]
    pairs = late[cols].merge(late[cols], on=["seed", "step", "samples"], suffixes=("_s", "_l"))
    pairs = pairs[pairs["gflops_g_s"] < pairs["gflops_g_l"]]
    better = pairs["value_l"] < pairs["value_s"] if lower_is_better else pairs["value_l"] > pairs["value_s"]
    return pd.DataFrame({"run_small": pairs["run_id_s"], "run_large": pairs["run_id_l"], "seed": pairs["seed"],
                         "step": pairs["step"], "samples": pairs["samples"],
                         "kind": np.where(pairs["final_s"] & pairs["final_l"], "final", "intermediate"),
                         "larger_better": better.astype(bool)}).reset_index(drop=True)


def fraction_with_ci(comp: pd.DataFrame, unit: str, *, n_boot: int, rng: np.random.Generator) -> dict[str, Any]:
    """Fraction of `comp` the larger model won, with a 95 % bootstrap interval resampling `unit`: `seed` (every
    comparison weighted by how often its seed was drawn) or `trial` (by the product of how often each of its two
    trials was drawn)."""
    n = len(comp)
    if not n:
        return {"n": 0, "larger_better": 0, "fraction": math.nan, "ci95": [math.nan, math.nan]}
    wins = int(comp["larger_better"].sum())
    keys = ["seed"] if unit == "seed" else ["run_small", "run_large"]
    cells = comp.groupby(keys, sort=True)["larger_better"].agg(["sum", "count"]).reset_index()
    units = sorted(set(cells["seed"])) if unit == "seed" else sorted(set(cells["run_small"]) | set(cells["run_large"]))
    index = {u: i for i, u in enumerate(units)}
    counts = bootstrap_counts(len(units), n_boot, rng).astype(float) if n_boot else np.zeros((0, len(units)))
    if unit == "seed":
        weights = counts[:, cells["seed"].map(index).to_numpy()]
    else:
        small, large = cells["run_small"].map(index).to_numpy(), cells["run_large"].map(index).to_numpy()
        weights = counts[:, small] * counts[:, large]
    total = weights @ cells["count"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(total > 0, (weights @ cells["sum"].to_numpy(float)) / total, np.nan)
    return {"n": n, "larger_better": wins, "fraction": wins / n, "ci95": list(percentile_interval(boot, LEVEL))}


def pair_table(comp: pd.DataFrame, trials: pd.DataFrame, unit: str, *, n_boot: int,
               rng: np.random.Generator) -> pd.DataFrame:
    """Per pair of sizes (smaller, larger) and kind of evaluation: comparisons, the fraction the larger won, CI."""
    several = several_patches(trials)
    label = pd.Series(size_key(trials, several).to_numpy(), index=trials["run_id"])
    gflops = pd.Series(pd.to_numeric(trials["gflops_g"], errors="coerce").to_numpy(), index=trials["run_id"])
    comp = comp.assign(smaller=comp["run_small"].map(label), larger=comp["run_large"].map(label),
                       g_small=comp["run_small"].map(gflops), g_large=comp["run_large"].map(gflops))
    rows = []
    for (g_s, g_l, smaller, larger), group in comp.groupby(["g_small", "g_large", "smaller", "larger"], sort=True):
        row: dict[str, Any] = {"smaller": smaller, "larger": larger, "gflops_ratio": g_l / g_s}
        for kind in ("intermediate", "final"):
            part = fraction_with_ci(group[group["kind"] == kind], unit, n_boot=n_boot, rng=rng)
            row.update({f"{kind}_n": part["n"], f"{kind}_fraction": part["fraction"],
                        f"{kind}_ci95": fmt_interval(part["ci95"], 3)})
        rows.append(row)
    return pd.DataFrame(rows, columns=["smaller", "larger", "gflops_ratio", "intermediate_n", "intermediate_fraction",
                                       "intermediate_ci95", "final_n", "final_fraction", "final_ci95"])


def _ci_pct(ci: list[float] | tuple[float, float]) -> str:
    lo, hi = ci
    return f"[{lo:.1%}, {hi:.1%}]" if math.isfinite(lo) and math.isfinite(hi) else "—"


# --- (c) plateau of the smallest model -----------------------------------------------------------------------
def plateau_claim(evals: pd.DataFrame, trials: pd.DataFrame, lower_is_better: bool, *, n_boot: int,
                  rng: np.random.Generator) -> dict[str, Any]:
    """The smallest model's (least gflops_g) relative improvement from the middle third of training to the last:
    (m_mid - m_last) / m_mid, where m_w is the seed mean of each trial's mean over its intermediate evaluations in
    window w.  Window means, because a GAN's fd swings by tens of per cent between neighbouring evaluations
    (docs/results/cpu-scaling-pilot.md): two single evaluations decide nothing."""
    g = pd.to_numeric(trials["gflops_g"], errors="coerce")
    smallest = trials[g == g.min()]
    if smallest.empty:
        return {"size": "—", "gflops_g": math.nan, "trials": 0, "verdict": "not measurable",
                "why": "no trial has gflops_g"}
    runs = list(smallest["run_id"])
    size = size_key(smallest, several_patches(trials)).iloc[0]
    mid = evals[evals["run_id"].isin(runs) & ~evals["final"]]
    out: dict[str, Any] = {"size": size, "gflops_g": float(g.min()), "trials": len(runs)}
    if mid.empty:
        return {**out, "verdict": "not measurable", "why": "no intermediate evaluation logged"}
    samples = mid["samples"].mode().iloc[0]  # the intermediate sample count (eval.num_samples)
    table = mid[mid["samples"] == samples].pivot_table(index="step", columns="run_id", values="value")
    table = table.dropna()  # steps every trial of the size evaluated
    total = float(evals.loc[evals["run_id"].isin(runs), "total"].max())
    out.update({"samples": float(samples), "total_steps": total})
    if table.empty:
        return {**out, "verdict": "not measurable", "why": "no intermediate step common to its trials"}
    lo, hi = total * (1 - 2 * PLATEAU_WINDOW), total * (1 - PLATEAU_WINDOW)
    middle = [s for s in table.index if lo < s <= hi]
    last = [s for s in table.index if s > hi]
    mean = table.mean(axis=1)
    out["evaluations"] = [{"step": int(s), "window": "middle third" if s in middle else "last third" if s in last
                           else "first third", "mean": float(mean[s]), "min": float(table.loc[s].min()),
                           "max": float(table.loc[s].max())} for s in table.index if s > 0]
    if not middle or not last:
        return {**out, "verdict": "not measurable",
                "why": f"no intermediate evaluation in steps ({lo:g}, {hi:g}] and another after step {hi:g}"}

    def improvement(values: np.ndarray) -> np.ndarray:  # rows: (middle, last) window means
        a, b = values[..., 0], values[..., 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (a - b) / a if lower_is_better else (b - a) / a

    pair = np.stack([table.loc[middle].mean(axis=0), table.loc[last].mean(axis=0)], axis=1)  # (trials, 2)
    rel = float(improvement(pair.mean(axis=0)))
    idx = bootstrap_indices(len(pair), n_boot, rng)
    boot = improvement(pair[idx].mean(axis=1)) if n_boot else np.empty(0)
    verdict = "near plateau" if rel < PLATEAU_THRESHOLD else "still improving"
    return {**out, "middle_steps": [int(s) for s in middle], "last_steps": [int(s) for s in last],
            "mean_middle": float(pair[:, 0].mean()), "mean_last": float(pair[:, 1].mean()),
            "relative_improvement": rel, "ci95": list(percentile_interval(boot, LEVEL)), "verdict": verdict}


# --- (d) the held-out prediction of the largest model ------------------------------------------------------------
def prediction_lines(prediction: Any, groups: list[str]) -> list[str]:
    """Per family, whether the measured value(s) of the largest held-out model fell inside the 95 % prediction
    interval (`analysis.predict.Prediction`), one line per family and law."""
    if prediction is None:
        return ["not run: `analyze --holdout 1` predicts the largest model from a fit on the others"]
    if prediction.kind != "trials":
        s = prediction.summary()
        return [f"isoFLOP study: {s['covered']} of {s['held_out']} held-out budget values inside their 95 % "
                "prediction interval (section \"Prediction of held-out larger trials\")"]
    lines, rows = [], prediction.rows
    for group in groups:
        mine = rows[rows["group"] == group]
        for law, part in mine.groupby("law", sort=False):
            top = part[part["x_value"] == part["x_value"].max()]
            inside = int(top["covered"].astype(bool).sum())
            names = ", ".join(str(n) for n in top["run_name"])
            lines.append(f"{group}, {law}: the largest model ({names}; {fmt_num(top['x_value'].iloc[0])} "
                         "training MACs) "
                         f"measured {', '.join(fmt_num(v) for v in top['measured'])}, predicted "
                         f"{fmt_num(top['predicted'].iloc[0])} with 95 % PI [{fmt_num(top['pi95_lo'].iloc[0])}, "
                         f"{fmt_num(top['pi95_hi'].iloc[0])}]: **{inside} of {len(top)} inside**")
        for skipped in prediction.skipped:
            if skipped["group"] == group:
                lines.append(f"{group}, {skipped['law']}: not predicted: {skipped['reason']}")
    return lines or ["no family could be predicted"]


# --- all of it ----------------------------------------------------------------------------------------------
@dataclass
class Claims:
    """The claims section of a report: per family, (a) to (d), with how each number was made."""

    metric: str
    lower_is_better: bool
    n_boot: int
    seed: int
    samples_source: str
    n_used: int
    n_unhealthy_left_out: int
    groups: list[dict[str, Any]] = field(default_factory=list)
    single_size: list[str] = field(default_factory=list)  # groups of one model size: only (c) to test
    single_size_plateau: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> (c) of its one size
    pairs: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)  # group -> the per-pair table
    prediction: list[str] = field(default_factory=list)

    def method(self) -> dict[str, str]:
        better = "lower" if self.lower_is_better else "higher"
        return {
            "correlation": f"Pearson r of log x and log final {self.metric} over the trials used; 95 % percentile "
                           f"interval of {self.n_boot} bootstrap resamples of trials (with replacement; the seeds of "
                           "one size are trials of the same x, resampled individually, not averaged first); "
                           "resamples in which x does not vary are dropped",
            "larger_better": f"every pair of trials with different gflops_g and the same train.seed, at every step "
                             f"both evaluated with the same sample count, after the first {WARMUP_FRACTION:.0%} of "
                             f"training (step > {WARMUP_FRACTION:g} x total steps): the fraction of comparisons in "
                             f"which the larger model has the {better} {self.metric} (ties count as not better). "
                             "Intermediate evaluations (eval.num_samples) are compared with each other; the final "
                             "evaluations (eval.final_samples, at the last step) are a comparison of their own. Sample "
                             f"counts from {self.samples_source}. 95 % interval: {self.n_boot} bootstrap resamples "
                             "of seeds (every comparison of a seed drawn k times counts k times), or of trials with a "
                             "single seed",
            "plateau": f"the smallest model (least gflops_g): its relative improvement from the middle third of "
                       "training to the last, each third's value the seed mean of each trial's mean over its "
                       "intermediate evaluations there (steps every seed evaluated; the final evaluation uses "
                       "another sample count); verdict \"near plateau\" when that improvement is below "
                       f"{PLATEAU_THRESHOLD:.0%}; 95 % interval from {self.n_boot} bootstrap resamples of its seeds",
            "prediction": "`analyze --holdout K` (analysis.predict): the K largest training-compute values held "
                          "out, the law fitted on the rest, 95 % prediction interval from the fit's bootstrap and "
                          "its resampled residuals",
        }

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"metric": self.metric, "lower_is_better": self.lower_is_better, "level": LEVEL,
                          "bootstrap": {"resamples": self.n_boot, "seed": self.seed},
                          "paper_r": PAPER_R, "n_used": self.n_used,
                          "unhealthy_left_out": self.n_unhealthy_left_out, "method": self.method(),
                          "single_size_groups": self.single_size, "single_size_plateau": self.single_size_plateau,
                          "groups": [{**g, "pairs": self.pairs[g["group"]].to_dict(orient="records")}
                                     for g in self.groups],
                          "prediction_of_the_largest": self.prediction})


def scaling_claims(history: pd.DataFrame, usable: pd.DataFrame, metric: str, switches: Iterable[str] = (), *,
                   lower_is_better: bool = True, n_boot: int = 1000, seed: int = 0, prediction: Any = None,
                   n_unhealthy_left_out: int = 0) -> Claims:
    """(a) to (d) for every family of `usable` (the trials every fit uses)."""
    rng = np.random.default_rng(seed)
    evals, source = evaluations(history, usable, metric)
    claims = Claims(metric=metric, lower_is_better=lower_is_better, n_boot=n_boot, seed=seed, samples_source=source,
                    n_used=len(usable), n_unhealthy_left_out=n_unhealthy_left_out)
    for group, trials in claim_groups(usable, switches):
        mine = evals[evals["run_id"].isin(trials["run_id"])]
        if pd.to_numeric(trials["gflops_g"], errors="coerce").nunique() == 1:
            claims.single_size.append(group)  # one model size: nothing to compare, but it has a plateau or not
            claims.single_size_plateau[group] = plateau_claim(mine, trials, lower_is_better, n_boot=n_boot, rng=rng)
            continue
        comp = comparisons(mine, lower_is_better)
        seeds = sorted(set(trials["train.seed"].map(fmt_value))) if "train.seed" in trials else ["—"]
        unit = "seed" if len(seeds) > 1 else "trial"
        entry = {"group": group, "n_trials": len(trials), "n_sizes": int(pd.to_numeric(trials["gflops_g"],
                                                                                        errors="coerce").nunique()),
                 "seeds": seeds, "bootstrap_unit": unit,
                 "correlation": [correlation_claim(trials, x, n_boot=n_boot, rng=rng) for x in CORRELATION_AXES],
                 "larger_better": {kind: fraction_with_ci(comp[comp["kind"] == kind], unit, n_boot=n_boot, rng=rng)
                                   for kind in ("intermediate", "final")},
                 "plateau": plateau_claim(mine, trials, lower_is_better, n_boot=n_boot, rng=rng)}
        claims.pairs[group] = pair_table(comp, trials, unit, n_boot=n_boot, rng=rng)
        claims.groups.append(entry)
    claims.prediction = prediction_lines(prediction, [g["group"] for g in claims.groups])
    return claims


# --- the report's section ----------------------------------------------------------------------------------------
def claims_markdown(claims: Claims, md_table: Any, curves_link: str = "") -> str:
    """The "Scaling claims" section of report.md: per family (a) to (c), then (d), then how each was made."""
    better = "lower" if claims.lower_is_better else "higher"
    left = (f"; {claims.n_unhealthy_left_out} unhealthy trial{'s' if claims.n_unhealthy_left_out != 1 else ''} left "
            "out (named under Notes)" if claims.n_unhealthy_left_out else "; no trial left out as unhealthy")
    single = (f"No claim that compares sizes for {', '.join(claims.single_size)}: one model size each.\n"
              if claims.single_size else "")
    single += "".join(_plateau_md(p, claims.metric, md_table, f"{group}: ")
                      for group, p in claims.single_size_plateau.items())
    if not claims.groups:
        return "\n".join(["## Scaling claims\n", single or "No group of trials to test a claim on.\n"]) + "\n"
    md = ["## Scaling claims\n",
          f"On the {claims.n_used} trials every fit uses{left}. 95 % bootstrap intervals, {claims.n_boot} resamples "
          f"(seed {claims.seed}); how each number was made is listed at the end of the section.\n"]
    if single:
        md.append(single)
    for g in claims.groups:
        md.append(f"### {g['group']} ({_n(g['n_trials'], 'trial')}, {_n(g['n_sizes'], 'size')}, "
                  f"seed{'s' if len(g['seeds']) != 1 else ''} {', '.join(g['seeds'])})\n")
        rows = []
        for c in g["correlation"]:
            if c.get("skipped"):
                rows.append([f"log {c['x']} vs log {claims.metric}", "—", "—", str(c["n"]), c["skipped"]])
                continue
            lo, hi = c["ci95"]
            reading = ("CI excludes 0" if math.isfinite(lo) and (hi < 0 or lo > 0) else "CI includes 0")
            reading += f"; paper {PAPER_R}" + ("" if not math.isfinite(hi) else
                                             (", inside the CI" if lo <= PAPER_R <= hi else ", outside the CI"))
            rows.append([f"log {c['x']} vs log {claims.metric}", fmt_num(c["r"], 3), fmt_interval(c["ci95"], 3),
                         str(c["n"]), reading])
        md += ["(a) Pearson correlation:\n",
               md_table(pd.DataFrame(rows, columns=["quantity", "r", "95 % CI", "trials", "reading"]))]
        rows = []
        for kind, label in (("intermediate", "intermediate evaluations, step > 10 % of training"),
                            ("final", "final evaluation (last step)")):
            f = g["larger_better"][kind]
            rows.append([label, f"{f['larger_better']} of {f['n']}", fmt_num(f["fraction"], 3), fmt_interval(f["ci95"], 3)])
        units = len(g["seeds"]) if g["bootstrap_unit"] == "seed" else g["n_trials"]
        coarse = (f", so at most {math.comb(2 * units - 1, units)} distinct resamples: a coarse interval"
                  if units <= 5 else "")
        md += [f"\n(b) the larger model has the {better} {claims.metric} at the same step, same seed (bootstrap over "
               f"{_n(units, g['bootstrap_unit'])}{coarse}; 0.5 = no relation, 1 = larger always better):\n",
               md_table(pd.DataFrame(rows, columns=["comparisons", "larger better", "fraction", "95 % CI"])),
               "\nPer pair of sizes:\n", md_table(claims.pairs[g["group"]])]
        md.append(_plateau_md(g["plateau"], claims.metric, md_table))
    md += ["\n(d) held-out prediction of the largest model:\n", *[f"- {line}" for line in claims.prediction], ""]
    if curves_link:
        md += [f"{claims.metric} against step per size (seed mean, min–max band over seeds; the final evaluation, "
               "on its own sample count, as a separate marker):\n", curves_link]
    md += ["How these numbers were made:\n", *[f"- {name}: {text}" for name, text in claims.method().items()], ""]
    return "\n".join(md) + "\n"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _plateau_md(p: dict[str, Any], metric: str, md_table: Any, prefix: str = "") -> str:
    """(c) as a line and the table of the smallest model's seed-mean intermediate evaluations (step 0 left out)."""
    line = (f"\n(c) {prefix}plateau of the smallest model, {p['size']} ({_n(p['trials'], 'trial')}): "
            + (_plateau_text(p, metric) if "relative_improvement" in p else f"**{p['verdict']}**: {p.get('why', '')}")
            + "\n")
    table = pd.DataFrame(p.get("evaluations", []))
    if table.empty:
        return line
    return line + "\n" + md_table(table.rename(columns={"mean": f"seed-mean {metric}"}))


def _plateau_text(p: dict[str, Any], metric: str) -> str:
    def steps(xs: list[int]) -> str:
        return f"step {xs[0]}" if len(xs) == 1 else f"steps {xs[0]}–{xs[-1]}"

    return (f"seed-mean {metric} {fmt_num(p['mean_middle'])} over the middle third ({steps(p['middle_steps'])}) -> "
            f"{fmt_num(p['mean_last'])} over the last third ({steps(p['last_steps'])}; intermediate evaluations, "
            f"{fmt_value(p['samples'])} samples; {fmt_value(p['total_steps'])} steps in all): relative improvement "
            f"{p['relative_improvement']:.1%} (95 % CI {_ci_pct(p['ci95'])}): **{p['verdict']}** (rule: near "
            f"plateau below {PLATEAU_THRESHOLD:.0%})")
