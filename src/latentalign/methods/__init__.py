"""Alignment methods: one module and one public entry point each, all on the shared loop and adapter."""

from __future__ import annotations

from ..generate import METHODS, resolve, sampling_defaults
from ..scorers import Scorer, load_scorer
from .attention_refinement import (
    AttentionRefinementConfig,
    AttentionRefinementResult,
    attend_and_excite_loss,
    attention_refinement,
    subject_tokens,
)
from .best_of_n import (
    BestOfNResult,
    PruneSchedule,
    best_of_n,
    early_exit_schedule,
    successive_halving_schedule,
)
from .noise_optimization import (
    NoiseOptimizationConfig,
    NoiseOptimizationResult,
    Reward,
    chi_regulariser,
    noise_optimization,
    recommended_iterations,
    recommended_steps,
)
from .noise_projection import (
    NoiseProjector,
    NoiseProjectorConfig,
    load_projector,
    noise_projection,
    projection_kl,
    save_projector,
)

# the scorer each method uses on the Shapes world when none is given (noise optimisation: unless the pipeline's
# latentalign.json recommends its own reward, as shapes-one-step does)
DEFAULT_SCORERS = {
    "best-of-n": "shapes-pixel",
    "early-exit": "shapes-noisy",
    "successive-halving": "shapes-noisy",
    "noise-optimization": "shapes-latent",
}


def resolve_scorer(scorer: Scorer | str | None, pipe, method: str) -> Scorer:
    """A scorer object, a saved scorer folder or shipped name ("shapes-noisy"), or None for the method's default."""
    if isinstance(scorer, Scorer):
        return scorer
    if scorer is None:
        defaults = sampling_defaults(pipe)
        if defaults.world != "shapes":
            raise ValueError(f"method {method!r} needs scorer=... outside the Shapes world (see latentalign.scorers)")
        recommended = defaults.noise_optimization_scorer
        scorer = recommended if method == "noise-optimization" and recommended else DEFAULT_SCORERS[method]
    if not isinstance(scorer, str):
        raise ValueError(f"scorer must be a Scorer, a folder or a shipped name, got {type(scorer).__name__}")
    return load_scorer(scorer, vae=pipe.vae)


def run_method(method: str, pipe, prompt: str | list[str], **options):
    """`generate(..., method=...)`: the Best-of-N family, noise optimisation, noise projection or attention
    refinement; checks options before any work."""
    if method not in METHODS or method == "plain":
        raise ValueError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    if method == "noise-optimization":
        return run_noise_optimization(pipe, prompt, **options)
    if method == "attention-refinement":
        return run_attention_refinement(pipe, prompt, **options)
    if method == "noise-projection":
        return noise_projection(pipe, prompt, **options)
    return run_best_of_n(method, pipe, prompt, **options)


def concept_texts(pipe, concept: str) -> list[str]:
    """What an avoid reward compares against: on the Shapes world, a colour or shape word becomes every
    single-object prompt that names it (the scorers were trained on prompts, not bare words)."""
    if sampling_defaults(pipe).world != "shapes":
        return [concept]
    from ..world import suite, vocabulary

    vocab = vocabulary()
    if concept not in vocab["colours"] + vocab["shapes"]:
        raise ValueError(f"--avoid takes a Shapes colour or shape, got {concept!r}")
    return [p for p in suite("single_object", "all") if concept in p.split()]


def run_noise_optimization(
    pipe,
    prompt: str | list[str],
    *,
    seed: int | list[int] = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    rewards: list[Reward] | None = None,
    scorer: Scorer | str | None = None,
    avoid: str | None = None,
    avoid_weight: float = 1.0,
    iterations: int | None = None,
    lr: float | None = None,
) -> NoiseOptimizationResult:
    """Noise optimisation with `rewards`, or by default the scorer's reward for the prompt (plus `avoid`)."""
    if iterations is None:
        iterations = recommended_iterations(pipe)
    if num_inference_steps is None:
        num_inference_steps = recommended_steps(pipe)
    changes = {"iterations": iterations, "lr": lr, "num_inference_steps": num_inference_steps}
    config = NoiseOptimizationConfig(**{k: v for k, v in changes.items() if v is not None})
    resolve(pipe, prompt, seed, config.num_inference_steps, guidance_scale)
    if rewards is not None and (scorer is not None or avoid is not None):
        raise ValueError("pass rewards=..., or scorer/avoid to build them, not both")
    if rewards is None:
        chosen = resolve_scorer(scorer, pipe, "noise-optimization")
        rewards = [Reward(chosen)]
        if avoid is not None:
            rewards.append(Reward(chosen, avoid_weight, concept_texts(pipe, avoid), avoid=True))
    return noise_optimization(pipe, prompt, rewards=rewards, seed=seed, config=config, guidance_scale=guidance_scale)


def run_attention_refinement(
    pipe,
    prompt: str | list[str],
    *,
    seed: int | list[int] = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    words: list[str] | None = None,
    config: AttentionRefinementConfig | None = None,
) -> AttentionRefinementResult:
    """Attend-and-Excite with refinement at chosen steps; `words` are the subjects (Shapes: the shape nouns)."""
    return attention_refinement(
        pipe,
        prompt,
        words=words,
        seed=seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        config=config or AttentionRefinementConfig(),
    )


def run_best_of_n(
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
    """Best-of-N, early exit or successive halving; checks every option before any work."""
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
    "AttentionRefinementConfig",
    "AttentionRefinementResult",
    "attend_and_excite_loss",
    "attention_refinement",
    "run_attention_refinement",
    "subject_tokens",
    "NoiseOptimizationConfig",
    "NoiseOptimizationResult",
    "Reward",
    "chi_regulariser",
    "noise_optimization",
    "recommended_iterations",
    "recommended_steps",
    "run_noise_optimization",
    "NoiseProjector",
    "NoiseProjectorConfig",
    "load_projector",
    "noise_projection",
    "projection_kl",
    "save_projector",
    "run_best_of_n",
    "BestOfNResult",
    "PruneSchedule",
    "best_of_n",
    "early_exit_schedule",
    "resolve_scorer",
    "run_method",
    "successive_halving_schedule",
]
