"""Presentation shared by every report: cell text, Markdown and LaTeX tables, links, files, MLflow logging.

`report.py` (analyze), `compare.py` (compare) and `ablation.py` write their tables and logs
through these helpers, so a table looks the same, and is written and logged the same way,
wherever it appears.  Nothing here computes a result.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.load import open_client


# --- cell text ---------------------------------------------------------------------------------
def fmt_value(value: Any) -> str:
    """A setting as text, the same whatever MLflow's string round trip made of it."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def fmt_num(value: float, digits: int = 4) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.{digits}g}"


def fmt_interval(ci: Sequence[float], digits: int = 4) -> str:
    """`[lo, hi]` of a confidence interval; `—` unless both ends are finite."""
    lo, hi = ci
    return f"[{fmt_num(lo, digits)}, {fmt_num(hi, digits)}]" if math.isfinite(lo) and math.isfinite(hi) else "—"


def value_cell(value: Any) -> str:
    """A raw value as a Markdown cell: numbers to 4 significant digits, settings by `fmt_value`."""
    if isinstance(value, (float, np.floating)):
        return fmt_num(float(value))
    return fmt_value(value).replace("|", "\\|")


def text_cell(value: Any) -> str:
    """An already formatted cell, its pipes escaped."""
    return str(value).replace("|", "\\|")


def several_patches(trials: pd.DataFrame) -> bool:
    return "patch" in trials and trials["patch"].map(fmt_value).nunique() > 1


def size_key(frame: pd.DataFrame, several: bool) -> pd.Series:
    """Model size, with the patch size when the study has several."""
    if several:
        return frame["size"].astype(str) + "/" + frame["patch"].map(fmt_value)
    return frame["size"].astype(str)


# --- Markdown ----------------------------------------------------------------------------------
def markdown_rows(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub Markdown table of cells taken as they are (no trailing newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(frame: pd.DataFrame, cell: Callable[[Any], str] = text_cell) -> str:
    """A Markdown table of a frame, each cell through `cell` (default: already formatted text); `_none_` if empty."""
    if frame.empty:
        return "_none_\n"
    cols = list(frame.columns)
    return markdown_rows(cols, ([cell(row[c]) for c in cols] for _, row in frame.iterrows())) + "\n"


def values_table(frame: pd.DataFrame) -> str:
    """A Markdown table of raw values (`value_cell`)."""
    return markdown_table(frame, value_cell)


def image_link(paths: Sequence[Path] | None, out_dir: Path, alt: str) -> str:
    """A figure's PNG inline and its PDF linked, relative to the document in `out_dir`; "" when there is none."""
    if not paths:
        return ""
    png, pdf = (p.relative_to(out_dir).as_posix() for p in paths)
    return f"![{alt}]({png})\n\n[PDF]({pdf})\n"


def table_links(name: str) -> str:
    """The line linking a table's three files under tables/."""
    return f"Files: [Markdown](tables/{name}.md) · [LaTeX](tables/{name}.tex) · [CSV](tables/{name}.csv)\n"


def tex_csv_links(stem: str) -> str:
    """The line linking a table's LaTeX and CSV files under tables/ (its Markdown is inline)."""
    return f"\nLaTeX: [tables/{stem}.tex](tables/{stem}.tex) · CSV: [tables/{stem}.csv](tables/{stem}.csv)\n"


# --- LaTeX -------------------------------------------------------------------------------------
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
        "−": r"$-$", "—": "--"}
_SCI = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)e([+-])0*(\d+)")


def tex(text: Any) -> str:
    """Text with LaTeX's special characters escaped (±, Δ, − and — as math/dashes)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def tex_num(text: str) -> str:
    """'12.3 \\pm 0.4 (n=3)' -> '$12.3 \\pm 0.4$ {\\scriptsize (n=3)}'; percent signs escaped."""
    if text == "—":
        return "--"
    main, _, rest = text.partition(" (")
    tail = f" {{\\scriptsize ({tex(rest)}}}" if rest else ""
    return f"${main}${tail}"


def tex_label(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text)


def tex_cell(text: Any) -> str:
    """Escaped cell; 1.2e+13 -> $1.2\\times10^{13}$, ∞ -> $\\infty$."""
    out = tex(str(text))
    for char, sub in (("∞", r"$\infty$"), ("²", r"\textsuperscript{2}"), ("–", "--"), ("·", r"$\cdot$"),
                      ("×", r"$\times$"), ("≈", r"$\approx$")):
        out = out.replace(char, sub)
    return _SCI.sub(lambda m: f"${m.group(1)}\\times10^{{{'-' if m.group(2) == '-' else ''}{m.group(3)}}}$", out)


def booktabs(caption: str, label: str, align: str, header: Sequence[str], blocks: Sequence[Sequence[Sequence[str]]]
             ) -> str:
    """A booktabs table (\\toprule, a \\midrule before each of `blocks` of rows, \\bottomrule); cells in LaTeX."""
    lines = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{caption}}}", f"\\label{{tab:{label}}}",
             f"\\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(header) + r" \\"]
    for block in blocks:
        lines.append(r"\midrule")
        lines += [" & ".join(row) + r" \\" for row in block]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex_table(frame: pd.DataFrame, caption: str, label: str, align: str | None = None) -> str:
    """A booktabs table of already formatted cells (`tex_cell`)."""
    cols = list(frame.columns)
    body = [[tex_cell(row[c]) for c in cols] for _, row in frame.iterrows()]
    return booktabs(tex_cell(caption), label, align or "l" + "r" * (len(cols) - 1), [tex_cell(c) for c in cols],
                    [body])


# --- files and MLflow --------------------------------------------------------------------------
def write_csvs(folder: Path, frames: dict[str, pd.DataFrame]) -> list[Path]:
    """Each frame as `folder/<name>.csv` (no index); the paths written."""
    paths = []
    for name, frame in frames.items():
        paths.append(folder / f"{name}.csv")
        frame.to_csv(paths[-1], index=False)
    return paths


def write_table_files(stem: Path, markdown: str, latex: str, csv: Callable[[Path], Any]) -> list[Path]:
    """A table as stem.md, stem.tex and stem.csv (`csv` writes the raw numbers to the path it is given)."""
    stem.with_suffix(".md").write_text(markdown)
    stem.with_suffix(".tex").write_text(latex)
    csv(stem.with_suffix(".csv"))
    return [stem.with_suffix(s) for s in (".md", ".tex", ".csv")]


def log_to_parents(tracking_uri: str, studies: Sequence[str], parents: dict[str, str], files: Sequence[Path],
                   out_dir: Path, artifact_dir: str, what: str) -> tuple[list[str], list[str]]:
    """`files` (under `out_dir`) on each study's parent run under `artifact_dir`/, keeping their sub-folders.

    Only the files a command wrote this time are logged, not older leftovers in `out_dir`.
    Returns (the parent runs logged to, a note per study without a parent run).
    """
    client = open_client(tracking_uri)
    logged, notes = [], []
    for study in studies:
        parent = parents.get(study)
        if parent is None:
            notes.append(f"study {study} has no parent run: the {what} is not logged to MLflow")
            continue
        for path in files:
            folder = path.parent.relative_to(out_dir).as_posix()
            client.log_artifact(parent, str(path), artifact_path=artifact_dir if folder == "." else
                                f"{artifact_dir}/{folder}")
        logged.append(parent)
    return logged, notes
