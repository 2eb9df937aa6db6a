"""The pipelines shipped inside the package, by name (no torch import: the CLI checks names before loading)."""

from __future__ import annotations

from pathlib import Path

SHAPES = "shapes"
SHAPES_ONE_STEP = "shapes-one-step"  # the Shapes pipeline distilled into one step (`latentalign train one-step`)
SHAPES_FLOW = "shapes-flow"  # SD3's architecture trained by rectified flow on the same world (`latentalign train flow`)
WEIGHTS = Path(__file__).parent / "weights"
EMBEDDED_PIPELINES = {
    SHAPES: WEIGHTS / "shapes",
    SHAPES_ONE_STEP: WEIGHTS / "shapes_one_step",
    SHAPES_FLOW: WEIGHTS / "shapes_flow",
}
SHAPES_SCORERS = WEIGHTS / "shapes_scorers"  # <kind>/ for pixel, latent, noisy


def config(name: str) -> dict:
    """An architecture from `latentalign/configs/<name>.json`."""
    import json
    from importlib import resources

    return json.loads(resources.files("latentalign").joinpath("configs", f"{name}.json").read_text())


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


def one_step_settings(world: str | None) -> dict:
    """The latentalign.json of a distilled pipeline: one unguided step, also as noise optimisation's generator."""
    settings = {"num_inference_steps": 1, "guidance_scale": 1.0, "noise-optimization": {"num_inference_steps": 1}}
    return settings if world is None else {**settings, "world": world}
