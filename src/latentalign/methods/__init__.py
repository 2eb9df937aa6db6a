"""Alignment methods: one module and one public entry point each, all on the shared loop and adapter."""

from __future__ import annotations

from ..generate import resolve, sampling_defaults
from ..scorers import Scorer, load_scorer
from .best_of_n import (
    BestOfNResult,
    PruneSchedule,
    best_of_n,
    early_exit_schedule,
    successive_halving_schedule,
)

METHODS = ("plain", "best-of-n", "early-exit", "successive-halving")
# the scorer each method uses on the Shapes world when none is given
DEFAULT_SCORERS = {"best-of-n": "shapes-pixel", "early-exit": "shapes-noisy", "successive-halving": "shapes-noisy"}


def resolve_scorer(scorer: Scorer | str | None, pipe, method: str) -> Scorer:
    """A scorer object, a saved scorer folder or shipped name ("shapes-noisy"), or None for the method's default."""
    if isinstance(scorer, Scorer):
        return scorer
    if scorer is None:
        if sampling_defaults(pipe).world != "shapes":
            raise ValueError(f"method {method!r} needs scorer=... outside the Shapes world (see latentalign.scorers)")
        scorer = DEFAULT_SCORERS[method]
    if not isinstance(scorer, str):
        raise ValueError(f"scorer must be a Scorer, a folder or a shipped name, got {type(scorer).__name__}")
    return load_scorer(scorer, vae=pipe.vae)


def run_method(
    method: str,
    pipe,
    prompt: str | list[str],
    *,
    seed: int | list[int] = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    n: int = 4,
    scorer: Scorer | str | None = None,
    final_scorer: Scorer | str | None = None,
    prune_steps: tuple[int, ...] | None = None,
    keep: tuple[int, ...] | None = None,
    max_batch: int = 64,
) -> BestOfNResult:
    """`generate(..., method=...)` for the Best-of-N family; checks every option before any work."""
    if method not in METHODS or method == "plain":
        raise ValueError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    _, _, steps, _ = resolve(pipe, prompt, seed, num_inference_steps, guidance_scale)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if (prune_steps is None) != (keep is None):
        raise ValueError("pass prune_steps and keep together")
    if prune_steps is not None:
        if method == "best-of-n":
            raise ValueError("best-of-n scores finished images only; use early-exit to prune mid-denoising")
        schedule = PruneSchedule(tuple(prune_steps), tuple(keep))
    elif method == "early-exit":
        schedule = early_exit_schedule(n, steps)
    elif method == "successive-halving":
        schedule = successive_halving_schedule(n, steps)
    else:
        schedule = PruneSchedule()
    schedule.validate(n, steps)
    chosen = resolve_scorer(scorer, pipe, method)
    final = None if final_scorer is None else resolve_scorer(final_scorer, pipe, method)
    return best_of_n(
        pipe,
        prompt,
        scorer=chosen,
        n=n,
        seed=seed,
        schedule=schedule,
        final_scorer=final,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        max_batch=max_batch,
    )


__all__ = [
    "METHODS",
    "BestOfNResult",
    "PruneSchedule",
    "best_of_n",
    "early_exit_schedule",
    "resolve_scorer",
    "run_method",
    "successive_halving_schedule",
]
