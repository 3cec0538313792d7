"""`gat-study results STUDY.yaml ...`: the generated results page of each study, from its MLflow store alone.

For each study file it runs `analyze` (and `compare`, when the study holds both model families) on the
study's MLflow store into a temporary folder, copies the PNG figures into `docs/results/<study>/` (shrunk
when large; no PDFs, no table files) and writes `docs/results/<study>.md`: how the runs were made (the
command, the git commit, the seeds, the machine and wall time the runner recorded on the study's parent
run, the store), the study file's own header as the runs logged it, the analysis report and the
comparison with their links rewritten, and at the end the hand-written reading,
`docs/results/<study>.reading.md`, copied verbatim.  Nothing is logged to MLflow, and nothing on the page
comes from anywhere but the store and the reading file; sampling speed (a measurement on the machine
that builds the page) is left out of the comparison for that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.contract import ROLE_TAG, STUDY_TAG, TRIAL_ID_TAG
from analysis.errors import AnalysisError

__all__ = ["add_results_parser", "build_page", "cmd_results", "rewrite_report"]

DEFAULT_OUT = Path("docs") / "results"
MAX_PNG_WIDTH = 1100  # px: a figure wider than this (analyze saves at 200 dpi) is shrunk for the page
MAX_PNG_BYTES = 300_000
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_LINK_LABELS = {"files", "latex", "csv", "pdf", "markdown", "and", "json"}


@dataclass
class Page:
    """What `build_page` wrote: the page, its figures, and what went wrong on the way (analysis errors)."""

    path: Path
    figures: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --- the analysis report, made a section of the page ----------------------------------------------
def _copy_png(source: Path, dest: Path) -> Path:
    """`source` copied to `dest`, shrunk to MAX_PNG_WIDTH px wide when it is wider or heavier than the limits."""
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        if image.width <= MAX_PNG_WIDTH and source.stat().st_size <= MAX_PNG_BYTES:
            shutil.copyfile(source, dest)
            return dest
        scale = min(1.0, MAX_PNG_WIDTH / image.width)
        small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.LANCZOS) if scale < 1 else image.copy()
        if small.mode not in ("RGB", "RGBA", "L", "P"):
            small = small.convert("RGBA")
        small.save(dest, optimize=True)
    if dest.stat().st_size > MAX_PNG_BYTES:  # photo-like content (sample grids): 256 adaptive colours
        with Image.open(dest) as image:
            image.convert("RGB").quantize(256).save(dest, optimize=True)
    return dest


def rewrite_report(text: str, source_dir: Path, figure_dir: Path, link_prefix: str, name_prefix: str = ""
                   ) -> tuple[str, list[Path]]:
    """(markdown, copied figures): `text` (a report.md written into `source_dir`) as a section of a page.

    Headings go one level down; every image or link to a PNG that exists is copied into `figure_dir` (as
    `name_prefix` + its path with `/` turned into `-`, `plots/` dropped) and pointed to as `link_prefix/<name>`;
    links to other local files (PDF, LaTeX, CSV, JSON, Markdown tables: not shipped) become their text,
    and a line made of nothing but such links is dropped.  Fenced code is left as it is."""
    out, figures, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append(line)
            continue
        if fenced:
            out.append(line)
            continue
        if re.match(r"^#{1,5} ", line):
            line = "#" + line
        dropped = []

        def swap(match: re.Match) -> str:
            bang, label, target = match.groups()
            if re.match(r"^[a-z]+://|^#|^mailto:", target):
                return match.group(0)
            local = (source_dir / target).resolve()
            if target.lower().endswith(".png") and local.is_file():
                rel = Path(target).as_posix().removeprefix("./").removeprefix("plots/")
                dest = figure_dir / (name_prefix + rel.replace("/", "-"))
                if dest not in figures:
                    figures.append(_copy_png(local, dest))
                return f"{bang}[{label}]({link_prefix}/{dest.name})"
            dropped.append(label)
            return label
        new = _LINK.sub(swap, line)
        if dropped:
            rest = _LINK.sub("", line)
            words = {w.lower() for w in re.findall(r"[A-Za-z]+", rest)}
            if words <= _LINK_LABELS:
                continue  # a line of links to files the page does not ship
        out.append(new)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n", figures


# --- facts about the runs, from MLflow ------------------------------------------------------------
def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3 * 3600 else f"{seconds / 3600:.2f} h"


def _study_header(yaml_text: str) -> str:
    """The comment block at the top of a study file, without the `#` marks."""
    lines = []
    for line in yaml_text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines).strip()


def _display_path(path: Path) -> str:
    """`path` as the user would type it: relative to the working directory when it lies below it."""
    rel = os.path.relpath(path.resolve(), Path.cwd())
    return Path(path).as_posix() if rel.startswith("..") else Path(rel).as_posix()


def _seed_line(study: Any, rows: list[dict[str, Any]]) -> str:
    """The seeds of the finished trial runs and how many of them each grid point has."""
    from analysis.contract import flatten

    by_id = {t.trial_id: t for t in study.trials}
    seeds, per_point = set(), Counter()
    for row in rows:
        trial = by_id.get(row["trial_id"])
        if trial is None or row["status"] not in ("completed", "diverged"):
            continue
        seeds.add(trial.config.train.seed)
        swept = flatten(json.loads(json.dumps(trial.swept, default=str)))
        point = tuple(sorted((k, str(v)) for k, v in swept.items() if not k.endswith("train.seed")))
        per_point[point] += 1
    if not seeds:
        return "none finished yet"
    counts = sorted(set(per_point.values()))
    per = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return (f"{', '.join(str(s) for s in sorted(seeds))} (`train.seed`; {per} finished "
            f"seed{'s' if counts[-1] > 1 else ''} per grid point, {len(per_point)} grid points)")


def _machine_lines(tags: dict[str, str]) -> list[str]:
    from orchestrator.tracking import MACHINE_TAG_PREFIX

    facts = {k[len(MACHINE_TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(MACHINE_TAG_PREFIX)}
    if not facts:
        return ["not recorded (these runs predate gat-study recording the machine as `machine.*` tags of the "
                "study's parent run)"]
    order = ["cpu", "logical_cpus", "memory_gb", "gpus", "os", "python", "ray_nodes", "ray_cpus", "ray_gpus"]
    names = {"cpu": "CPU", "logical_cpus": "logical CPUs", "memory_gb": "memory (GB)", "gpus": "GPUs", "os": "OS",
             "python": "Python", "ray_nodes": "Ray nodes", "ray_cpus": "Ray CPUs", "ray_gpus": "Ray GPUs"}
    keys = [k for k in order if k in facts] + sorted(k for k in facts if k not in order)
    return [", ".join(f"{names.get(k, k)} {facts[k]}" for k in keys)
            + " (the driver's machine and the Ray cluster of the latest `run` that trained)"]


def _wall_time_line(tags: dict[str, str], runs: list[Any]) -> str:
    from orchestrator.tracking import SESSIONS_TAG, WALL_TIME_TAG

    try:
        total = float(tags[WALL_TIME_TAG])
        sessions = int(tags.get(SESSIONS_TAG, 1))
        return (f"{_minutes(total)} ({total:.0f} s: the wall time of the {sessions} `gat-study run` "
                f"session{'s' if sessions != 1 else ''} that trained, as recorded on the parent run)")
    except (KeyError, ValueError):
        pass
    starts = [r.info.start_time for r in runs if r.info.start_time]
    ends = [r.info.end_time for r in runs if r.info.end_time]
    if not starts or not ends:
        return "not recorded"
    span = (max(ends) - min(starts)) / 1000
    return (f"not recorded by the runner of these runs; the trials' MLflow runs span {_minutes(span)} (first "
            "start to last end, pauses between sessions included)")


# --- the page ------------------------------------------------------------------------------------
def build_page(study_path: Path, out_root: Path = DEFAULT_OUT, *, tracking_uri: str | None = None,
               holdout: int | None = None, keep_unhealthy: bool = False, n_boot: int = 1000, seed: int = 0,
               command: str | None = None) -> Page:
    """Write `out_root/<study>.md` and its figures in `out_root/<study>/` for the study file `study_path`, from
    its MLflow store; returns the Page.  Raises AnalysisError (no store, no runs) or StudyError (invalid file)
    before writing anything; an analysis that fails on the runs there is a problem on the page and in
    `Page.problems`."""
    from analysis.load import download_run_artifact, load_studies, open_client
    from orchestrator.analyze_cmd import run_analysis
    from orchestrator.compare_cmd import run_comparison
    from orchestrator.study import load_study

    study = load_study(study_path, require_files=False)  # the pages read the store: no weights needed
    cfg = study.config
    name, uri = cfg.name, tracking_uri or cfg.tracking_uri
    ids = {t.trial_id for t in study.trials}
    data = load_studies(uri, name, trial_ids=ids)  # AnalysisError: no store, no runs of the study
    client = open_client(uri)
    parent_id = data.parents.get(name)
    parent = client.get_run(parent_id) if parent_id else None
    tags = parent.data.tags if parent else {}
    experiment = client.get_experiment_by_name(cfg.experiment)
    found = client.search_runs([experiment.experiment_id], max_results=10000,
                               filter_string=f"tags.`{ROLE_TAG}` = 'trial' and tags.`{STUDY_TAG}` = '{name}'")
    runs = [r for r in found if r.data.tags.get(TRIAL_ID_TAG) in ids]
    rows = [{"trial_id": r.data.tags[TRIAL_ID_TAG], "status": r.data.tags.get("status", "?"),
             "health": r.data.tags.get("health", "")} for r in runs]

    shown = _display_path(study_path)
    options = ([f"--holdout {holdout}"] if holdout else []) + (["--keep-unhealthy"] if keep_unhealthy else [])
    command = command or " ".join(["gat-study results", *options, shown])
    page_path = out_root / f"{name}.md"
    figure_dir = out_root / name
    page = Page(page_path)
    sections: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        logged = download_run_artifact(data, parent_id, "study/study.yaml", Path(tmp) / "logged") if parent_id else None
        logged_text = logged.read_text() if logged else None
        env = download_run_artifact(data, parent_id, "study/environment.json", Path(tmp) / "env") if parent_id else None
        versions = json.loads(env.read_text()) if env else {}
        if figure_dir.is_dir():  # figures of an earlier build that this one may not make
            for old in figure_dir.glob("*.png"):
                old.unlink()
        try:
            report = run_analysis(name, uri, Path(tmp) / "analysis", keep_unhealthy=keep_unhealthy, n_boot=n_boot,
                                  seed=seed, log_artifacts=False, trial_ids=ids, holdout=holdout)
            text, figures = rewrite_report(report.path.read_text(), report.path.parent, figure_dir, name)
            page.figures += figures
            analyze_cmd = " ".join(["gat-study analyze", *options, shown])
            sections.append(f"## Analysis\n\nWhat `{analyze_cmd}` writes to `report.md`, from the same store "
                            "(tables and PNG figures; its PDF, LaTeX and CSV files are not copied here).\n\n" + text)
        except AnalysisError as exc:
            page.problems.append(f"analyze: {exc}")
            sections.append(f"## Analysis\n\n`gat-study analyze {shown}` failed on these runs: {exc}\n")
        if {"gat", "dit"} <= {t.config.model.family for t in study.trials}:  # a study of both families
            try:
                comp = run_comparison(name, uri, Path(tmp) / "compare", speed=False, n_boot=n_boot, seed=seed,
                                      keep_unhealthy=keep_unhealthy, log_artifacts=False, trial_ids=ids)
                text, figures = rewrite_report(comp.path.read_text(), comp.path.parent, figure_dir, name, "compare-")
                page.figures += figures
                compare_cmd = " ".join(["gat-study compare --no-speed",
                                        *(["--keep-unhealthy"] if keep_unhealthy else []), shown])
                sections.append(f"## GAN vs diffusion\n\nWhat `{compare_cmd}` writes to `compare.md`, from the same "
                                "store (without the sampling-speed table: that is measured on the machine that "
                                "builds this page, not read from MLflow).\n\n" + text)
            except AnalysisError as exc:
                page.problems.append(f"compare: {exc}")
                sections.append(f"## GAN vs diffusion\n\n`gat-study compare {shown}` failed on these runs: {exc}\n")

    statuses = Counter(r["status"] for r in rows)
    health = Counter(r["health"] for r in rows if r["health"])
    missing = len(ids - {r["trial_id"] for r in rows})
    trials_line = (f"{len(rows)} of the file's {len(ids)} trials have a run in the store"
                   + (f" ({missing} never started)" if missing else "") + ": "
                   + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
                   + ("; health " + ", ".join(f"{n} {h}" for h, n in sorted(health.items())) if health else ""))
    commit = tags.get("git_commit", "not recorded")
    dirty = tags.get("git_dirty")
    versions_line = ", ".join(f"{k} {versions[k]}" for k in ("gat-study", "torch", "ray", "mlflow", "python")
                              if k in versions) or "not recorded"
    facts = [
        f"- **Command that made the runs**: `gat-study run {shown}`",
        f"- **Seeds**: {_seed_line(study, rows)}",
        f"- **Trials**: {trials_line}",
        f"- **Machine**: {'; '.join(_machine_lines(tags))}",
        f"- **Wall time**: {_wall_time_line(tags, runs)}",
        f"- **MLflow store**: `{uri}` (experiment `{cfg.experiment}`, study run `{parent_id or 'none'}`); "
        f"browse it with `gat-study ui {shown}`",
        f"- **Code**: git commit `{commit}`" + (f" ({'with' if dirty == 'true' else 'without'} uncommitted changes)"
                                                 if dirty in ("true", "false") else "") + f"; {versions_line}",
    ]
    if logged_text is not None and logged_text != Path(study_path).read_text():
        facts.append(f"- **Note**: `{shown}` has changed since its latest `run` (the parent run's "
                     "`study/study.yaml` differs); the trials here are those of the file as it is now")
    header = _study_header(logged_text if logged_text is not None else Path(study_path).read_text())
    reading_path = out_root / f"{name}.reading.md"
    reading = (reading_path.read_text().rstrip() + "\n" if reading_path.is_file() else
               f"No reading was written for this study yet (`{reading_path.as_posix()}` does not exist).\n")
    parts = [
        f"# Results: {name}\n",
        f"<!-- Generated by `{command}`; do not edit: rebuild it with that command. "
        f"The reading at the end is copied from {reading_path.as_posix()}. -->\n",
        f"*Generated by `{command}` from the study's MLflow store alone; do not edit by hand. "
        f"The reading at the end is copied verbatim from `{reading_path.as_posix()}`, the one hand-written part.*\n",
        f"{cfg.description}\n" if getattr(cfg, "description", None) else "",
        "## How these runs were made\n",
        "\n".join(facts) + "\n",
    ]
    if header:
        parts.append("## What the study file asks\n\nThe header of the study file as its latest run logged it "
                     "(`study/study.yaml` of the study run):\n\n" + "\n".join(f"> {line}".rstrip()
                                                                          for line in header.splitlines()) + "\n")
    parts += [s.rstrip() + "\n" for s in sections]
    parts.append("## Reading\n\n" + reading)
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text("\n".join(p for p in parts if p))
    return page


def add_results_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `results` subcommand, for orchestrator/cli.py's subparsers."""
    p = sub.add_parser("results", help="the generated results page of each study (docs/results/<study>.md and its "
                                       "PNG figures) from its MLflow store: analyze, compare, run facts, reading")
    p.add_argument("studies", nargs="+", type=Path, metavar="STUDY.yaml", help="study files (their runs must exist)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder of the pages (default {DEFAULT_OUT})")
    p.add_argument("--tracking-uri", help="MLflow store (default: each study's; only with one study)")
    p.add_argument("--holdout", type=int, metavar="K", help="passed to analyze: predict the K largest-compute trials")
    p.add_argument("--keep-unhealthy", action="store_true", help="passed to analyze and compare")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per fit (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=cmd_results)
    return p


def cmd_results(args: argparse.Namespace) -> int:
    """Build every page; a study that cannot be built is an error line, the others are still built."""
    from orchestrator.study import StudyError

    if args.tracking_uri and len(args.studies) > 1:
        raise ValueError("--tracking-uri: give one study with it (each study has its own store)")
    if args.holdout is not None and args.holdout < 1:
        raise ValueError(f"--holdout: expected a whole number >= 1, got {args.holdout}")
    status = 0
    for path in args.studies:
        try:
            page = build_page(path, args.out, tracking_uri=args.tracking_uri, holdout=args.holdout,
                              keep_unhealthy=args.keep_unhealthy, n_boot=args.bootstrap, seed=args.seed)
        except StudyError as exc:
            print(f"error: {path}: the study is invalid:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
            status = 2
            continue
        except (AnalysisError, FileNotFoundError, ValueError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            status = 2
            continue
        print(f"{path}: {page.path} ({len(page.figures)} figures in {page.path.with_suffix('')})")
        for problem in page.problems:
            print(f"  problem: {problem}", file=sys.stderr)
            status = max(status, 1)
    return status

