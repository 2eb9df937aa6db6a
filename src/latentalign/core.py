"""The types every part of latentalign shares: a pipeline folder's recommended settings, the result of a
generation, and the checks on prompts and seeds. A leaf module: it imports nothing else of latentalign but
`cost`, so methods, the engine and `generate` all read it without an import cycle."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .cost import Cost
from .files import file_stamp, read_json

DEFAULTS_FILE = "latentalign.json"  # shipped beside model_index.json: recommended settings and the world
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass(frozen=True)
class SamplingDefaults:
    """What a pipeline folder's `latentalign.json` recommends. Run settings left None come from the pipeline
    class's own `__call__` defaults (as diffusers would run it); `methods` maps a registered method name to the
    settings it recommends for that method (its config fields, and run settings such as `num_inference_steps`
    that apply when it runs)."""

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    world: str | None = None  # "shapes" when the pipeline draws the Shapes world (prompts are then validated)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str | None = None  # the file these came from, for error messages

    def for_method(self, name: str) -> dict[str, Any]:
        return dict(self.methods.get(name, {}))


_READ: dict[tuple, SamplingDefaults] = {}


def read_defaults(folder: str | Path) -> SamplingDefaults:
    """Parse `<folder>/latentalign.json`: run settings at the top, one key per method (by registered name); read
    once per version of the file (generate reads it several times a call)."""
    path = Path(folder) / DEFAULTS_FILE
    if not path.exists():
        return SamplingDefaults()
    key = (str(path), *file_stamp(path))
    if key not in _READ:
        _READ[key] = _parse_defaults(path)
    return _READ[key]


def _parse_defaults(path: Path) -> SamplingDefaults:
    if not path.is_file():
        return SamplingDefaults()
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    top = {f.name for f in fields(SamplingDefaults)} - {"methods", "source"}
    methods, settings = {}, {}
    for key, value in data.items():
        if key in top:
            settings[key] = value
        elif isinstance(value, dict):  # a method's settings; the registry checks the name (methods.base)
            methods[key] = value
        else:
            raise ValueError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(top))}, or a method name)")
    return SamplingDefaults(**settings, methods=methods, source=str(path))


def sampling_defaults(pipe) -> SamplingDefaults:
    """Settings a pipeline folder recommends in its `latentalign.json` (empty for a pipeline built in memory)."""
    name = getattr(pipe, "name_or_path", None)
    if not name:  # built in memory: Path("") would read a latentalign.json from the working directory
        return SamplingDefaults()
    return read_defaults(Path(str(name)))


def call_default(pipe, name: str, fallback: Any = None) -> Any:
    """The default of argument `name` in the pipeline class's own `__call__` (SDXL's guidance 5.0, SD3's 28 steps)."""
    parameter = inspect.signature(type(pipe).__call__).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default


def call_arguments(pipe) -> set[str]:
    """The argument names of the pipeline class's `__call__`."""
    return set(inspect.signature(type(pipe).__call__).parameters) - {"self", "kwargs"}


@dataclass
class GenerationResult:
    """Images (in `output_type`: PIL images, an (N, H, W, 3) array, an (N, 3, H, W) tensor in [0, 1], or the
    latents), the final latents (scaled, as the pipeline produces them), what it cost, the settings it ran with and
    the stages that ran. What a stage reports (Best-of-N's `scores`, ReNO's `rewards`, attention refinement's
    `losses`, ...) is in `outputs` and readable as an attribute: `result.scores`."""

    images: Any
    latents: torch.Tensor
    prompts: list[str | None]
    seeds: list[int | None]
    cost: Cost
    settings: dict = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)  # [{"name", "place", "settings"}], in the order they acted
    outputs: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str):
        outputs = self.__dict__.get("outputs")
        if outputs is not None and name in outputs:
            return outputs[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = (images.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype("uint8")
    return [Image.fromarray(a) for a in arr]


def as_output(images: torch.Tensor, output_type: str):
    """Decoded images in [0, 1] (N, 3, H, W) as diffusers' image processor returns them for `output_type`."""
    if output_type == "pil":
        return to_pil(images)
    if output_type == "np":
        return images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "pt":
        return images.detach()
    raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")


def as_list(x, n: int, name: str) -> list:
    items = list(x) if isinstance(x, (list, tuple)) else [x] * n
    if len(items) != n:
        raise ValueError(f"got {len(items)} {name} for {n} prompts")
    return items


def check_prompts(pipe, prompt) -> list[str]:
    """A prompt or a list of them, non-empty; on the Shapes world every word must be the world's, and the prompt
    is written the world's one way (`Scene.prompt()`: "A red circle, and ..." reads as "a red circle and ..."), so
    one scene is one text for the text encoder as for the checker."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("no prompt given")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError("empty prompt")
    if sampling_defaults(pipe).world == "shapes":
        from .world import parse

        prompts = [parse(p).prompt() for p in prompts]
    return prompts


SEED_LIMIT = 2**32  # torch's CPU generator keeps a seed's low 32 bits: s and s + 2**32 draw the same noise


def check_seeds(seeds: list) -> list[int]:
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers, got {seeds}")
    if any(s >= SEED_LIMIT for s in seeds):
        raise ValueError(f"seeds must be below 2**32 (the generator keeps 32 bits: wider seeds repeat), got {seeds}")
    return seeds


def check_positive_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_finite(name: str, value, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def check_steps(steps) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
    return steps


def check_guidance(scale) -> float:
    check_finite("guidance_scale", scale, minimum=0)
    return float(scale)


def default_steps(pipe) -> int:
    recommended = sampling_defaults(pipe).num_inference_steps
    return call_default(pipe, "num_inference_steps", 50) if recommended is None else recommended


def default_guidance(pipe) -> float:
    recommended = sampling_defaults(pipe).guidance_scale
    return call_default(pipe, "guidance_scale", 7.5) if recommended is None else recommended


def resolve(pipe, prompt, seed, num_inference_steps, guidance_scale) -> tuple[list[str], list[int], int, float]:
    """Validate inputs before any work: prompts, one seed per prompt, steps and guidance (the pipeline's
    recommendations, else its class's `__call__` defaults)."""
    prompts = check_prompts(pipe, prompt)
    seeds = check_seeds(as_list(seed, len(prompts), "seeds"))
    steps = check_steps(default_steps(pipe) if num_inference_steps is None else num_inference_steps)
    scale = check_guidance(default_guidance(pipe) if guidance_scale is None else guidance_scale)
    return prompts, seeds, steps, scale
