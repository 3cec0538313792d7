"""What a process imports: the analysis never torch (it runs where torch is not installed, and fast); a GAN
trial neither diffusers nor torchvision (every worker process pays its imports before training)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import analysis
from gat_core.samples import tile

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


def test_a_gan_trial_imports_neither_diffusers_nor_torchvision() -> None:
    """Every trial process pays its imports before training: diffusers (the DiT family) and torchvision cost a
    GAN trial about 4 s each time Ray starts a worker.  Building and stepping a GAN trainer must not load them."""
    code = ("import sys, tempfile\n"
            "from pathlib import Path\n"
            "from gat_core.config import TrialConfig\n"
            "from gat_core.families import make_trainer\n"
            "import gat_core.loop\n"
            "cfg = TrialConfig.model_validate({'dataset': {'name': 'shapes', 'resolution': 8, 'size': 64},\n"
            "    'model': {'width': 16, 'depth': 4, 'heads': 2, 'patch_size': 2}, 'train': {'batch_size': 4, 'steps': 1}})\n"
            "with tempfile.TemporaryDirectory() as tmp:\n"
            "    trainer = make_trainer(cfg, Path(tmp))\n"
            "    trainer.iteration()\n"
            "    trainer.sample_grid(Path(tmp) / 'grid.png')\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'torchvision'}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


@pytest.mark.parametrize("count, channels, nrow", [(12, 1, 4), (10, 3, 4), (3, 3, 8), (7, 1, 3)])
def test_sample_tiles_are_laid_out_as_torchvision_make_grid_lays_them_out(count: int, channels: int, nrow: int) -> None:
    from torchvision.utils import make_grid

    images = torch.randint(0, 255, (count, channels, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tile(images, nrow), make_grid(images, nrow=nrow, padding=1, pad_value=255))
