"""Model size registry: `GAT-XL/2` -> depth, width, heads, patch size (DiT's sizes)."""

from __future__ import annotations

PRESETS: dict[str, dict[str, int]] = {
    "GAT-S": {"depth": 12, "width": 384, "heads": 6},
    "GAT-B": {"depth": 12, "width": 768, "heads": 12},
    "GAT-L": {"depth": 24, "width": 1024, "heads": 16},
    "GAT-XL": {"depth": 28, "width": 1152, "heads": 16},
}
PATCH_SIZES = (2, 4, 8)
DIT_PREFIX = "DiT-"  # DiT-B/2 names the same size as GAT-B/2, for the diffusion baseline


def preset_family(name: str) -> str:
    """The model family a preset name implies: `dit` for `DiT-*`, else `gat` (any case: MLflow params are text)."""
    return "dit" if name.lower().startswith(DIT_PREFIX.lower()) else "gat"


def preset_names() -> list[str]:
    """Every registry entry, e.g. `GAT-S/2`."""
    return [f"{size}/{p}" for size in PRESETS for p in PATCH_SIZES]


def parse_preset(name: str) -> dict[str, int]:
    """`GAT-B/4` (or `DiT-B/4`, the same sizes) -> {depth, width, heads, patch_size}; ValueError otherwise."""
    size, _, patch = name.partition("/")
    size = "GAT-" + size[len(DIT_PREFIX):] if size.startswith(DIT_PREFIX) else size
    if size not in PRESETS or not patch.isdigit() or int(patch) not in PATCH_SIZES:
        raise ValueError(f"model.preset: unknown preset {name!r}; expected one of {', '.join(preset_names())} "
                         "(or DiT-S/2 ... DiT-XL/8 for the diffusion baseline)")
    return {**PRESETS[size], "patch_size": int(patch)}
