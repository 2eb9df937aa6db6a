"""Plain generation on the shared loop, with the result type every method returns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .adapters import Denoiser
from .cost import Cost
from .sampling import StepCallback, sample

DEFAULTS_FILE = "latentalign.json"  # shipped beside model_index.json: recommended settings and the world
# what `generate(..., method=...)` and the CLI's --method take (latentalign.methods.run_method runs each)
METHODS = (
    "plain",
    "best-of-n",
    "early-exit",
    "successive-halving",
    "noise-optimization",
    "noise-projection",
    "attention-refinement",
)


@dataclass(frozen=True)
class SamplingDefaults:
    num_inference_steps: int = 50  # diffusers' Stable Diffusion defaults, for pipelines that ship none
    guidance_scale: float = 7.5
    world: str | None = None  # "shapes" when the pipeline draws the Shapes world (prompts are then validated)
    # noise optimisation's iteration count for this pipeline; None: the method's own default (ReNO's 50)
    noise_optimization_iterations: int | None = None
    # the differentiable generator's steps for noise optimisation (1 for a one-step model); None: the method's own
    # default (a 4-step schedule)
    noise_optimization_steps: int | None = None
    # the reward noise optimisation uses when none is given (a shipped scorer name or a folder); None: the method's
    # default for the world
    noise_optimization_scorer: str | None = None
    # the projector noise projection uses when none is given (a shipped projector name or a folder); None: it
    # must be given
    noise_projector: str | None = None


def sampling_defaults(pipe) -> SamplingDefaults:
    """Settings a pipeline folder recommends in its `latentalign.json`, else Stable Diffusion's."""
    name = getattr(pipe, "name_or_path", None)
    if not name:  # built in memory: Path("") would read a latentalign.json from the working directory
        return SamplingDefaults()
    path = Path(str(name)) / DEFAULTS_FILE
    if path.is_file():
        return SamplingDefaults(**json.loads(path.read_text()))
    return SamplingDefaults()


@dataclass
class GenerationResult:
    """Images, the final latents (scaled, as the pipeline produces them) and what it cost."""

    images: list[Image.Image]
    latents: torch.Tensor
    prompts: list[str]
    seeds: list[int]
    cost: Cost
    settings: dict = field(default_factory=dict)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = (images.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype("uint8")
    return [Image.fromarray(a) for a in arr]


def _as_list(x, n: int, name: str) -> list:
    items = list(x) if isinstance(x, (list, tuple)) else [x] * n
    if len(items) != n:
        raise ValueError(f"got {len(items)} {name} for {n} prompts")
    return items


def resolve(pipe, prompt, seed, num_inference_steps, guidance_scale) -> tuple[list[str], list[int], int, float]:
    """Validate inputs before any work: prompts, seeds, steps, guidance (and vocabulary on the Shapes world)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("no prompt given")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError("empty prompt")
    defaults = sampling_defaults(pipe)
    if defaults.world == "shapes":
        from .world import parse

        for p in prompts:
            parse(p)
    seeds = _as_list(seed, len(prompts), "seeds")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers, got {seeds}")
    steps = defaults.num_inference_steps if num_inference_steps is None else num_inference_steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
    scale = defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
    if scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {scale}")
    return prompts, seeds, steps, scale


@torch.no_grad()
def generate(
    pipe,
    prompt: str | list[str],
    *,
    seed: int | list[int] = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str | list[str] | None = None,
    callback: StepCallback | None = None,
    method: str = "plain",
    **options,
) -> GenerationResult:
    """Text-to-image generation on latentalign's shared loop; one seed per prompt, same noise as a batch of one.

    `method` picks an alignment method ("best-of-n", "early-exit", "successive-halving"; see
    `latentalign.methods.run_method` for its `options`, e.g. `n=8`); "plain" is ordinary sampling.
    """
    if method != "plain":
        if negative_prompt is not None or callback is not None:
            raise ValueError(f"method {method!r} takes no negative_prompt or callback")
        from .methods import run_method

        return run_method(
            method,
            pipe,
            prompt,
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            **options,
        )
    if options:
        raise ValueError(f"plain generation takes no options {sorted(options)}; pass method=... to use them")
    prompts, seeds, steps, scale = resolve(pipe, prompt, seed, num_inference_steps, guidance_scale)
    negatives = None if negative_prompt is None else _as_list(negative_prompt, len(prompts), "negative prompts")
    cost = Cost()
    with cost.timed():
        den = Denoiser(pipe, cost)
        cond = den.encode(prompts, scale, negatives)
        latents, schedulers = den.start(seeds, steps)
        latents = sample(den, latents, cond, schedulers, callback=callback)
        images = to_pil(den.decode(latents))
    settings = {"num_inference_steps": steps, "guidance_scale": scale}
    return GenerationResult(images, latents, prompts, seeds, cost, settings)
