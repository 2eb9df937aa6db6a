"""Reward-based noise optimisation (ReNO, Eyring et al., NeurIPS 2024) with latent rewards and negative-concept
steering (Latent-CLIP, arXiv 2503.08455): gradient ascent on the initial noise through a short generator."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from ..adapters import Denoiser
from ..cost import Cost
from ..generate import GenerationResult, resolve, sampling_defaults, to_pil
from ..scorers import Scorer


@dataclass(frozen=True)
class Reward:
    """`weight * score(x, prompt)`; with `avoid=True`, `weight * (1 - max_j score(x, concept_j))`: steer away from a
    concept described by one or several texts. `prompt=None` means the generation prompt."""

    scorer: Scorer
    weight: float = 1.0
    prompt: str | list[str] | None = None
    avoid: bool = False

    def __post_init__(self):
        if not isinstance(self.scorer, Scorer):
            raise ValueError("a Reward needs a latentalign scorer")
        if not math.isfinite(self.weight):
            raise ValueError(f"reward weight must be finite, got {self.weight}")
        if self.avoid and not self.prompt:
            raise ValueError("an avoid reward needs the concept text as prompt=")


@dataclass(frozen=True)
class NoiseOptimizationConfig:
    """ReNO's defaults (REFERENCES.md), except the schedule: ReNO runs one-step models (SD-Turbo; on the Shapes
    world, the distilled "shapes-one-step"); for a many-step pipeline the generator is a short DDIM schedule we
    back-propagate through. `generate` takes the steps a pipeline recommends (`noise_optimization_steps`)."""

    iterations: int = 50
    lr: float = 5.0
    momentum: float = 0.9  # SGD with Nesterov momentum
    grad_clip: float = 0.1  # gradient-norm clipping
    reg_weight: float = 0.01  # lambda of the chi-norm regulariser
    num_inference_steps: int = 4  # the differentiable generator's steps (1 for one-step models such as SD-Turbo)
    gradient_checkpointing: bool = False  # recompute each denoiser step in the backward pass (less memory)

    def __post_init__(self):
        if self.iterations < 0 or self.num_inference_steps < 1:
            raise ValueError("iterations must be >= 0 and num_inference_steps >= 1")
        for name in ("lr", "momentum", "grad_clip", "reg_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value}")


def recommended_iterations(pipe) -> int:
    """The iteration count `pipe` recommends in its latentalign.json, else ReNO's default."""
    recommended = sampling_defaults(pipe).noise_optimization_iterations
    return NoiseOptimizationConfig.iterations if recommended is None else recommended


def recommended_steps(pipe) -> int:
    """The generator steps `pipe` recommends for noise optimisation in its latentalign.json, else the default."""
    recommended = sampling_defaults(pipe).noise_optimization_steps
    return NoiseOptimizationConfig.num_inference_steps if recommended is None else recommended


@dataclass
class NoiseOptimizationResult(GenerationResult):
    """The best iterate's image per prompt, plus the reward of every iterate (`rewards[p][i]`, without the
    regulariser) and which one was kept (`best_iteration[p]`, 0 = the initial noise)."""

    rewards: list[list[float]] = field(default_factory=list)
    best_iteration: list[int] = field(default_factory=list)
    skipped_updates: list[int] = field(default_factory=list)  # iterations whose gradient was not finite


def chi_regulariser(z: torch.Tensor, weight: float) -> torch.Tensor:
    """Negative log-likelihood of the norm of a d-dimensional Gaussian (a chi distribution), in fp32:
    `weight * (0.5 * ||z||^2 - (d - 1) * log ||z||)`, per sample."""
    z = z.float().flatten(1)
    d = z.shape[1]
    sq = z.pow(2).sum(1)
    log_norm = 0.5 * torch.log(sq.clamp_min(torch.finfo(torch.float32).tiny))
    return weight * (0.5 * sq - (d - 1) * log_norm)


def _reward(rewards: list[Reward], den: Denoiser, latents: torch.Tensor, prompt: str, cost: Cost) -> torch.Tensor:
    total = torch.zeros(latents.shape[0], device=latents.device)
    pixels = None
    for r in rewards:
        if r.scorer.space == "pixels":
            if pixels is None:
                pixels = den.decode(latents)
            x, t = pixels, None
        else:
            x = latents
            noisy = r.scorer.space == "noisy_latents"
            t = torch.zeros(latents.shape[0], dtype=torch.long, device=latents.device) if noisy else None
        cost.scorer_calls += latents.shape[0]
        texts = [r.prompt] if isinstance(r.prompt, str) else (r.prompt or [prompt])
        scores = torch.stack([r.scorer.score(x, text, t) for text in texts], dim=0)
        total = total + r.weight * ((1 - scores.max(0).values) if r.avoid else scores.mean(0))
    return total


def differentiable_sample(
    den: Denoiser, z: torch.Tensor, cond, seeds: list[int], steps: int, checkpointing: bool = False
) -> torch.Tensor:
    """The short sampler as a differentiable function of the initial (standard Gaussian) noise `z`, one row per
    seed; a stochastic scheduler's step noise comes from each seed's generator afresh on every call, so it is the
    same function at every iterate."""
    _, scheduler = den.start(seeds, steps)
    latents = z * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(latents, t)
        if checkpointing:
            out = checkpoint(lambda x, t=t: den.denoise(x, t, cond)[0], model_in, use_reentrant=False)
        else:
            out = den.denoise(model_in, t, cond)[0]
        latents = scheduler.step(out, t, latents).prev_sample
    return latents


def noise_optimization(
    pipe,
    prompt: str | list[str],
    *,
    rewards: list[Reward],
    seed: int | list[int] = 0,
    config: NoiseOptimizationConfig = NoiseOptimizationConfig(),
    guidance_scale: float | None = None,
    callback=None,
) -> NoiseOptimizationResult:
    """ReNO: maximise the weighted rewards minus the chi-norm regulariser over the initial noise, by SGD with
    Nesterov momentum and gradient-norm clipping; keep the iterate with the highest reward. `callback` gets
    `{"prompt_index", "iteration", "latents", "reward"}` after every iterate is scored."""
    prompts, seeds, steps, scale = resolve(pipe, prompt, seed, config.num_inference_steps, guidance_scale)
    if not rewards:
        raise ValueError("noise optimisation needs at least one Reward")
    if not all(isinstance(r, Reward) for r in rewards):
        raise ValueError("rewards must be latentalign.methods.Reward objects")
    cost = Cost()
    den = Denoiser(pipe, cost)
    for module in (den.model, den.vae, *[r.scorer for r in rewards]):
        module.requires_grad_(False)
    finals, all_rewards, best_its, skipped = [], [], [], []
    with cost.timed():
        for index, (p, s) in enumerate(zip(prompts, seeds, strict=True)):
            with torch.no_grad():
                cond = den.encode([p], scale)
            # the optimised variable is the standard Gaussian noise (what the chi regulariser's norm is about); the
            # sampler scales it to its scheduler's start (sigma_max for Euler-type schedulers, 1 for DDIM/DDPM)
            z = den.initial_noise([s]).float().clone().requires_grad_(True)
            opt = torch.optim.SGD([z], lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
            history, best, best_it, best_latents, bad = [], -math.inf, 0, None, 0
            for it in range(config.iterations + 1):  # iterate 0 scores the initial noise
                last = it == config.iterations
                with torch.enable_grad() if not last else torch.no_grad():  # gradients opened for this step only
                    latents = differentiable_sample(
                        den, z.to(den.dtype), cond, [s], steps, config.gradient_checkpointing
                    )
                    reward = _reward(rewards, den, latents, p, cost)
                    loss = -reward.sum() + chi_regulariser(z, config.reg_weight).sum()
                value = float(reward.detach().sum())
                history.append(value)
                if callback is not None:
                    callback({"prompt_index": index, "iteration": it, "latents": latents.detach(), "reward": value})
                if value > best or best_latents is None:  # a NaN reward never wins, but iterate 0 is kept
                    best, best_it, best_latents = (value if math.isfinite(value) else -math.inf), it, latents.detach()
                if last:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not torch.isfinite(z.grad).all():
                    bad += 1  # a non-finite gradient never reaches the noise
                    continue
                torch.nn.utils.clip_grad_norm_([z], config.grad_clip)
                before = z.detach().clone()
                opt.step()
                if not torch.isfinite(z).all():
                    bad += 1
                    with torch.no_grad():
                        z.copy_(before)
            finals.append(best_latents)
            all_rewards.append(history)
            best_its.append(best_it)
            skipped.append(bad)
        with torch.no_grad():
            final = torch.cat(finals)
            images = to_pil(den.decode(final))
    settings = {
        "num_inference_steps": steps,
        "guidance_scale": scale,
        "iterations": config.iterations,
        "lr": config.lr,
        "rewards": [
            {"scorer": r.scorer.kind, "weight": r.weight, "prompt": r.prompt, "avoid": r.avoid} for r in rewards
        ],
    }
    return NoiseOptimizationResult(images, final, prompts, seeds, cost, settings, all_rewards, best_its, skipped)
