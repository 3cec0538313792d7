"""Analysis of finished studies from MLflow (pandas, scipy, matplotlib; never torch).

One job per module:

* `contract`  the MLflow run contract's names (tags, params, the FLOP convention, metric direction),
              shared with the writer `orchestrator.tracking`
* `load`      MLflow child runs of a study -> `StudyData` (tidy trials frame + metric histories)
* `select`    which metric (and its diversity companion), which direction, which trials a fit may use
              (completed, healthy ones; and why the others not)
* `fit`       pure and saturating power laws, bootstrap CIs, goodness of fit, extrapolation check,
              and whether a fit is a scaling law at all (exponent CI excludes 0, right sign)
* `scaling`   the set of fits a study gets (per variant, overall / per patch / per model size)
* `frontier`  the compute-efficient frontier from the per-step training curves
* `ablation`  switch detection, baselines, mean ± std tables in Markdown, LaTeX and CSV
* `plots`     publication-style figures (PNG + PDF)
* `render`    cell text, Markdown/LaTeX tables, links, table files and logging, for every report
* `report`    fits.json, tables, plots and report.md, logged on the study's parent run
* `families`  GAT against DiT: per-family fits, equal- and needed-compute and sampling tables
* `compare`   that comparison presented: tables, figures, compare.json and compare.md
* `synthetic` studies with a known answer, logged by the run contract (tests, demos)
"""
