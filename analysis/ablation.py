"""Ablation tables: for each switch of the grid, the metric per setting and model size.

A switch is any swept config key that is not a model size, the patch size or a seed
(MNG schedule, learning-rate rule, VFM on/off, number of MNG levels, ...).  Each cell is
the mean +- std over the trials that share the setting and the context (model size, and
patch size and the other switches when they vary), and the table ends with the difference
of every setting to the baseline: the study's base config when known, else the "off"
setting, else the most common one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from analysis.render import booktabs, fmt_num, fmt_value, markdown_rows, tex, tex_label, tex_num

SIZE_KEYS = frozenset({"model.width", "model.depth", "model.heads", "model.preset", "model.d_width", "model.d_depth",
                       "model.d_heads", "model.d_cond_dim"})
PATCH_KEY = "model.patch_size"
FAMILY_KEY = "model.family"
DERIVED = {FAMILY_KEY: "model.preset"}  # key -> the swept key it follows (GAT-B/2 vs DiT-B/2)
SECTIONS = ("dataset.", "model.", "train.")
OFF_VALUES = ("off", "False", "none", "None", "0", "constant", "—")


def _seed_key(column: str) -> bool:
    return "seed" in column.rsplit(".", 1)[-1]


def detect_switches(trials: pd.DataFrame) -> list[str]:
    """Config keys that vary across trials for a reason other than model size, patch size or seed.

    A key that is constant within every model size (heads following width, steps
    following a FLOP budget) belongs to the size, not to an ablation; a key that splits the
    trials exactly like an earlier one (`train.vfm` and `train.vfm.weight`) is not repeated.
    """
    swept: set[str] = set()
    if "swept" in trials:
        for keys in trials["swept"].dropna():
            swept |= set(keys) if isinstance(keys, (list, tuple)) else set()
    switches, partitions = [], set()
    for col in sorted(c for c in trials.columns if c.startswith(SECTIONS)):
        if col in SIZE_KEYS or col == PATCH_KEY or _seed_key(col):
            continue
        values = trials[col].map(fmt_value)
        if values.nunique() < 2:
            continue
        sources = {col, DERIVED.get(col, col)}
        if swept and not any(c == k or c.startswith(k + ".") or k.startswith(c + ".") for k in swept for c in sources):
            continue
        if col != FAMILY_KEY and "size" in trials and trials["size"].nunique() > 1 \
                and trials.assign(_v=values).groupby("size")["_v"].nunique().max() <= 1:
            continue  # (a family is never part of a size, even where GAT and DiT share no width)
        partition = tuple(pd.factorize(values)[0])
        if partition in partitions:
            continue
        partitions.add(partition)
        switches.append(col)
    return switches


def baseline_value(trials: pd.DataFrame, switch: str, base_config: dict[str, Any] | None = None) -> str:
    """The setting differences are taken against: base config, else an 'off' setting, else the most common."""
    values = trials[switch].map(fmt_value)
    present = list(values.value_counts().index)
    if base_config and (switch in base_config or any(k.startswith(switch + ".") for k in base_config)):
        base = base_config.get(switch)
        text = fmt_value(base)
        if text in present:
            return text
        if base is None and "off" in present:
            return "off"
        if base is not None and "on" in present:
            return "on"
    for off in OFF_VALUES:
        if off in present:
            return off
    return present[0]


@dataclass(frozen=True)
class AblationTable:
    """Cells of one ablation (tidy) and their rendering as Markdown, LaTeX (booktabs) and CSV."""

    switch: str
    metric: str
    baseline: str
    lower_is_better: bool
    values: list[str]       # settings, baseline first
    contexts: list[str]     # columns, smallest model first
    cells: pd.DataFrame     # value, context, mean, std, n, delta, delta_se, delta_pct
    context_sizes: dict[str, str]  # context -> model size (for colours)
    direction: str | None = None   # the caption's reading of the metric, where "lower/higher is better" is wrong

    def cell(self, value: str, context: str) -> pd.Series | None:
        hit = self.cells[(self.cells["value"] == value) & (self.cells["context"] == context)]
        return None if hit.empty else hit.iloc[0]

    @property
    def caption(self) -> str:
        arrow = self.direction or ("lower is better" if self.lower_is_better else "higher is better")
        return (f"{self.metric} ({arrow}) by {self.switch}: mean ± std over seeds (n trials per cell); "
                f"Δ = setting − baseline ({self.switch}={self.baseline}) ± standard error")

    def _rows(self, pm: str, delta_name: str) -> tuple[list[str], list[list[str]], list[list[str]]]:
        header = [self.switch] + self.contexts
        body, deltas = [], []
        for value in self.values:
            label = f"{value} (baseline)" if value == self.baseline else value
            row = [label]
            for ctx in self.contexts:
                c = self.cell(value, ctx)
                if c is None:
                    row.append("—")
                    continue
                text = fmt_num(c["mean"]) + (f"{pm}{fmt_num(c['std'], 2)}" if np.isfinite(c["std"]) else "")
                row.append(f"{text} (n={int(c['n'])})")
            body.append(row)
        for value in self.values:
            if value == self.baseline:
                continue
            row = [delta_name.format(value=value, base=self.baseline)]
            for ctx in self.contexts:
                c = self.cell(value, ctx)
                if c is None or not np.isfinite(c["delta"]):
                    row.append("—")
                    continue
                se = f"{pm}{fmt_num(c['delta_se'], 2)}" if np.isfinite(c["delta_se"]) else ""
                row.append(f"{c['delta']:+.4g}{se} ({c['delta_pct']:+.1f}%)")
            deltas.append(row)
        return header, body, deltas

    def to_markdown(self) -> str:
        header, body, deltas = self._rows(" ± ", "Δ {value} − {base}")
        return markdown_rows(header, body + deltas) + f"\n\n{self.caption}\n"

    def to_latex(self) -> str:
        header, body, deltas = self._rows(" \\pm ", "Δ {value} − {base}")

        def cells(row: list[str]) -> list[str]:
            return [tex(row[0]), *(tex_num(c) for c in row[1:])]

        blocks = [[cells(r) for r in body]] + ([[cells(r) for r in deltas]] if deltas else [])
        return booktabs(tex(self.caption), f"ablation-{tex_label(self.switch)}", "l" + "c" * len(self.contexts),
                        [tex(h) for h in header], blocks)

    def to_csv(self, path: Path) -> Path:
        self.cells.assign(switch=self.switch, metric=self.metric, baseline=self.baseline).to_csv(path, index=False)
        return path


def _contexts(trials: pd.DataFrame, switch: str, others: Iterable[str]) -> pd.Series:
    parts = [trials["size"].astype(str)]
    if "patch" in trials and trials["patch"].nunique() > 1:
        parts.append("/" + trials["patch"].map(fmt_value))
    for other in others:
        if other != switch and trials[other].map(fmt_value).nunique() > 1:
            parts.append(f" {other.rsplit('.', 1)[-1]}=" + trials[other].map(fmt_value))
    label = parts[0]
    for p in parts[1:]:
        label = label + p
    return label


def ablation_table(trials: pd.DataFrame, switch: str, metric: str = "metric_value", *, metric_name: str | None = None,
                   lower_is_better: bool = True, baseline: str | None = None,
                   other_switches: Iterable[str] = ()) -> AblationTable:
    """Mean ± std of `metric` per setting of `switch` and per context, with Δ to the baseline."""
    frame = trials.assign(_value=trials[switch].map(fmt_value),
                          _context=_contexts(trials, switch, other_switches),
                          _y=trials[metric].astype(float))
    order = frame.sort_values(["size_rank", "patch"] if "size_rank" in frame else ["_context"], kind="stable")
    base = baseline if baseline is not None else baseline_value(trials, switch)
    return _table(frame, switch, metric_name or metric, base, lower_is_better, list(dict.fromkeys(order["_context"])))


def block_util_table(trials: pd.DataFrame, switch: str, keys: list[str], *, baseline: str | None = None,
                     other_switches: Iterable[str] = ()) -> AblationTable:
    """G's per-block utilisation (`block_util_<i>` at the final evaluation) by setting of `switch`: an ablation
    table whose columns are G's blocks (per context when the study has several), so that "with MNG the early
    blocks carry more of the output" reads off its first columns, with Δ to the baseline ± standard error."""
    context = _contexts(trials, switch, other_switches)
    several = context.nunique() > 1
    order = trials.assign(_c=context).sort_values(["size_rank", "patch"] if "size_rank" in trials else ["_c"],
                                                  kind="stable")["_c"]
    parts, contexts = [], []
    for ctx in dict.fromkeys(order):
        rows = trials[context == ctx]
        rows = rows.assign(_value=rows[switch].map(fmt_value))
        for key in keys:
            label = (f"{ctx} " if several else "") + f"block {key[11:]}"
            contexts.append(label)
            parts.append(rows.assign(_context=label, _y=rows[key].astype(float)).dropna(subset=["_y"]))
    frame = pd.concat(parts, ignore_index=True)
    base = baseline if baseline is not None else baseline_value(trials, switch)
    table = _table(frame, switch, "block utilisation of G", base, False, contexts)
    return replace(table, direction="relative change of G's output when the block is skipped: higher = the block "
                                    "carries more")


def _table(frame: pd.DataFrame, switch: str, metric_name: str, base: str, lower_is_better: bool,
           contexts: list[str]) -> AblationTable:
    """Cells (mean, std, n per setting and context; Δ to the baseline's cell with its standard error)."""
    values = [base] + sorted(v for v in frame["_value"].unique() if v != base)
    stats = frame.groupby(["_value", "_context"])["_y"].agg(mean="mean", std="std", n="count").reset_index()
    stats = stats.rename(columns={"_value": "value", "_context": "context"})
    ref = stats[stats["value"] == base].set_index("context")
    rows = []
    for _, s in stats.iterrows():
        r = ref.loc[s["context"]] if s["context"] in ref.index else None
        if r is None:
            delta = se = pct = np.nan
        else:
            delta = s["mean"] - r["mean"]
            se = math.sqrt(s["std"] ** 2 / s["n"] + r["std"] ** 2 / r["n"]) if s["n"] > 1 and r["n"] > 1 else np.nan
            pct = 100 * delta / r["mean"] if r["mean"] else np.nan
        rows.append({**s.to_dict(), "delta": delta, "delta_se": se, "delta_pct": pct})
    cells = pd.DataFrame(rows, columns=["value", "context", "mean", "std", "n", "delta", "delta_se", "delta_pct"])
    cells["_v"] = cells["value"].map(values.index)
    cells["_c"] = cells["context"].map(contexts.index)
    cells = cells.sort_values(["_v", "_c"]).drop(columns=["_v", "_c"]).reset_index(drop=True)
    return AblationTable(switch=switch, metric=metric_name, baseline=base, lower_is_better=lower_is_better,
                         values=values, contexts=contexts, cells=cells,
                         context_sizes=dict(zip(frame["_context"], frame["size"].astype(str))))
