"""The pipelines shipped inside the package, by name (no torch import: the CLI checks names before loading)."""

from __future__ import annotations

from pathlib import Path

SHAPES = "shapes"
SHAPES_ONE_STEP = "shapes-one-step"  # the Shapes pipeline distilled into one step (`latentalign train one-step`)
WEIGHTS = Path(__file__).parent / "weights"
EMBEDDED_PIPELINES = {SHAPES: WEIGHTS / "shapes", SHAPES_ONE_STEP: WEIGHTS / "shapes_one_step"}


def embedded_folder(name: str | Path) -> Path | None:
    """The folder of an embedded pipeline's name, or None for anything else (a folder or a Hub id)."""
    return EMBEDDED_PIPELINES.get(str(name))
