"""The analysis must never import torch: it runs where torch is not installed, and fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import analysis

ROOT = Path(__file__).resolve().parent.parent


def analysis_modules() -> list[str]:
    names = sorted(p.stem for p in Path(analysis.__file__).parent.glob("*.py") if p.stem != "__init__")
    return ["analysis"] + [f"analysis.{n}" for n in names] + ["orchestrator.analyze_cmd"]


def test_every_analysis_module_imports_without_torch() -> None:
    modules = analysis_modules()
    assert {"analysis.load", "analysis.fit", "analysis.report"} <= set(modules)
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "print('TORCH' if bad else 'CLEAN', len(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "CLEAN" in out.stdout, f"torch was imported by the analysis: {out.stdout}"
