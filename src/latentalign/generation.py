"""`generate`: a stock pipeline's call on latentalign's shared loop, plain or with any composition of methods."""

from __future__ import annotations

import inspect

import torch

from .core import (
    DEFAULTS_FILE,
    GenerationResult,
    SamplingDefaults,
    call_arguments,
    resolve,
    sampling_defaults,
    to_pil,
)
from .engine import execute, resolve_run
from .methods.base import Composition, Stage, compose, method_names, registered

# generate's own arguments besides the stages' options: the stock call's (those the pipeline's __call__ has) and
# latentalign's (seed, callback, max_batch)
RUN_ARGUMENTS = tuple(p for p in inspect.signature(resolve_run).parameters if p not in ("pipe", "composition", "given"))

__all__ = [
    "DEFAULTS_FILE",
    "GenerationResult",
    "SamplingDefaults",
    "generate",
    "method_names",
    "resolve",
    "sampling_defaults",
    "to_pil",
]


def check_composition(pipe, composition: Composition) -> None:
    """Refuse method keys of the pipeline's latentalign.json that name no registered method."""
    defaults = sampling_defaults(pipe)
    unknown = set(defaults.methods) - set(registered())
    if unknown:
        raise ValueError(f"{defaults.source}: unknown key {sorted(unknown)[0]!r} (methods: {', '.join(registered())})")


@torch.no_grad()
def generate(
    pipe,
    prompt: str | list[str] | None = None,
    *,
    method: str | Stage | list = "plain",
    **options,
) -> GenerationResult:
    """Text-to-image generation with the pipeline's own call arguments, plain or with alignment methods.

    `method`: "plain", a registered name ("best-of-n", "early-exit", "successive-halving", "noise-optimization",
    "noise-projection", "attention-refinement"; `latentalign.methods.method_names()`), a stage object
    (`EarlyExit(n=8)`), or a composition of stages acting at different places: a sequence, or names joined by "+"
    ("noise-projection+early-exit"). Options of stages named by string go in `options` (e.g. `n=8`).

    The rest of `options` are the arguments of the pipeline's `__call__` that apply: `generator` (one for the
    batch, or one per image), `height`, `width`, `num_inference_steps`, `timesteps` / `sigmas`, `guidance_scale`,
    `guidance_rescale`, `eta`, `negative_prompt`, `num_images_per_prompt`, `prompt_embeds` /
    `negative_prompt_embeds` (and the pooled ones on SDXL / SD3), `latents`, `output_type` ("pil", "np", "pt",
    "latent"), `clip_skip`, `cross_attention_kwargs` / `joint_attention_kwargs`, `callback_on_step_end` with
    `callback_on_step_end_tensor_inputs`; plus `seed` (an int: one generator seeded with it, as
    `generator=torch.Generator().manual_seed(seed)`; a list: one per image), `callback` (latentalign's step callback,
    which sees the x0 prediction) and `max_batch` (rows denoised at once). Defaults come from the pipeline folder's
    `latentalign.json`, else from the pipeline class's `__call__` (SDXL: guidance 5.0; SD3: 28 steps at 7.0); the
    result's `settings` records them. Every argument is checked before any denoiser call.
    """
    run_args = {k: options.pop(k) for k in list(options) if k in RUN_ARGUMENTS}
    unsupported = sorted(set(options) & (call_arguments(pipe) - set(RUN_ARGUMENTS)))
    if unsupported:  # a stock argument latentalign's loop does not take (yet): say so, not "no such option"
        raise TypeError(
            f"generate does not take {type(pipe).__name__}'s {unsupported[0]!r} (it takes: "
            f"{', '.join(sorted(set(RUN_ARGUMENTS) & call_arguments(pipe)))})"
        )
    composition = compose(method, options)
    check_composition(pipe, composition)
    stages = tuple(s.with_pipeline_defaults(pipe) for s in composition.stages)
    composition = Composition(stages)
    given = {k for k, v in run_args.items() if v is not None}
    run = resolve_run(pipe, composition, prompt, **run_args, given=given)
    composition = Composition(tuple(s.prepare(run) for s in composition.stages))
    run.encode()
    return execute(run, composition)
