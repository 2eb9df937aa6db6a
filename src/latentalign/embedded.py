"""The pipelines shipped inside the package, by name (no torch import: the CLI checks names before loading)."""

from __future__ import annotations

from pathlib import Path

SHAPES = "shapes"
SHAPES_ONE_STEP = "shapes-one-step"  # the Shapes pipeline distilled into one step (`latentalign train one-step`)
WEIGHTS = Path(__file__).parent / "weights"
EMBEDDED_PIPELINES = {SHAPES: WEIGHTS / "shapes", SHAPES_ONE_STEP: WEIGHTS / "shapes_one_step"}


def model_id(pipe) -> str:
    """How results name the pipeline they came from: an embedded pipeline's name, else its folder or Hub id."""
    path = Path(str(getattr(pipe, "name_or_path", "") or ""))
    if not path.exists():
        return str(path)
    for name, folder in EMBEDDED_PIPELINES.items():
        if path.resolve() == folder.resolve():
            return name
    return str(path.resolve())


def embedded_folder(name: str | Path) -> Path | None:
    """The folder of an embedded pipeline's name, or None for anything else (a folder or a Hub id)."""
    return EMBEDDED_PIPELINES.get(str(name))
