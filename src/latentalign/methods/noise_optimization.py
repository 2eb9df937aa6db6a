"""Reward-based noise optimisation (ReNO, Eyring et al., NeurIPS 2024) with latent rewards and negative-concept
steering (Latent-CLIP, arXiv 2503.08455): gradient ascent on the initial noise through a short generator."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch.utils.checkpoint import checkpoint

from ..adapters import Denoiser, clone_generator
from ..core import check_finite, check_positive_int, sampling_defaults
from ..cost import Cost
from ..scorers import Scorer
from .base import NoiseStage, check_scorer_reads, register, resolve_scorer

NOISE_OPTIMIZATION_ITERATIONS = 50  # ReNO's default, where a pipeline's latentalign.json recommends none


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


def recommended_iterations(pipe) -> int:
    """The iteration count `pipe` recommends for noise optimisation in its latentalign.json, else ReNO's 50."""
    recommended = NoiseOptimization().with_pipeline_defaults(pipe).iterations
    return NOISE_OPTIMIZATION_ITERATIONS if recommended is None else recommended


def recommended_steps(pipe) -> int:
    """The generator steps `pipe` recommends for noise optimisation (its latentalign.json), else 4."""
    return NoiseOptimization().run_settings(pipe)["num_inference_steps"]


def chi_regulariser(z: torch.Tensor, weight: float) -> torch.Tensor:
    """Negative log-likelihood of the norm of a d-dimensional Gaussian (a chi distribution), in fp32:
    `weight * (0.5 * ||z||^2 - (d - 1) * log ||z||)`, per sample."""
    z = z.float().flatten(1)
    d = z.shape[1]
    sq = z.pow(2).sum(1)
    log_norm = 0.5 * torch.log(sq.clamp_min(torch.finfo(torch.float32).tiny))
    return weight * (0.5 * sq - (d - 1) * log_norm)


def _reward(rewards: list[Reward], den: Denoiser, latents: torch.Tensor, prompt: str, cost: Cost) -> torch.Tensor:
    if not torch.isfinite(latents).all():  # a NaN reward (and gradient): the iterate never wins, the step is skipped
        return latents.flatten(1).sum(1) * float("nan")
    total = torch.zeros(latents.shape[0], device=latents.device)
    pixels = None
    for r in rewards:
        extra = {}
        if r.scorer.space == "pixels":
            if pixels is None:
                pixels = den.decode(latents)
            x, t = pixels, None
        else:
            x = latents
            noisy = r.scorer.space == "noisy_latents"
            t = torch.zeros(latents.shape[0], dtype=torch.long, device=latents.device) if noisy else None
            if r.scorer.reads_pixels:  # a ScoreSum with a pixel member: the same one decode
                pixels = den.decode(latents) if pixels is None else pixels
                extra = {"pixels": pixels}
        cost.scorer_calls += latents.shape[0]
        texts = [r.prompt] if isinstance(r.prompt, str) else (r.prompt or [prompt])
        scores = torch.stack([r.scorer.score(x, text, t, **extra) for text in texts], dim=0)
        total = total + r.weight * ((1 - scores.max(0).values) if r.avoid else scores.mean(0))
    return total


def differentiable_sample(
    den: Denoiser, z: torch.Tensor, cond, schedulers, checkpointing: bool = False
) -> torch.Tensor:
    """The short sampler as a differentiable function of the initial (standard Gaussian) noise `z`, on a fresh
    scheduler set (`schedulers`, whose generators give a stochastic scheduler's step noise)."""
    latents = z * schedulers.init_noise_sigma
    for t in schedulers.timesteps:
        model_in = schedulers.scale_model_input(latents, t)
        if checkpointing:
            out = checkpoint(lambda x, t=t: den.denoise(x, t, cond)[0], model_in, use_reentrant=False)
        else:
            out = den.denoise(model_in, t, cond)[0]
        latents = schedulers.step(out, t, latents).prev_sample
    return latents


def concept_texts(pipe, concept: str) -> list[str]:
    """What an avoid reward compares against: on the Shapes world, a colour or shape word becomes every
    single-object prompt that names it (the scorers were trained on prompts, not bare words)."""
    if sampling_defaults(pipe).world != "shapes":
        return [concept]
    from ..world import suite, vocabulary

    vocab = vocabulary()
    if concept not in vocab["colours"] + vocab["shapes"]:
        raise ValueError(f"avoid takes a Shapes colour or shape, got {concept!r}")
    return [p for p in suite("single_object", "all") if concept in p.split()]


@register
@dataclass(frozen=True)
class NoiseOptimization(NoiseStage):
    """ReNO: maximise the weighted rewards minus the chi-norm regulariser over each row's initial noise, through
    the run's own (short) schedule, by SGD with Nesterov momentum and gradient-norm clipping; each row keeps the
    iterate with the highest reward, and its image is that iterate's. ReNO's defaults (REFERENCES.md), except the
    schedule: ReNO runs one-step models (SD-Turbo; on the Shapes world, "shapes-one-step"); for a many-step
    pipeline the run defaults to a 4-step schedule, back-propagated through."""

    name: ClassVar[str] = "noise-optimization"
    differentiates_denoiser: ClassVar[bool] = True  # every iterate's sampling is back-propagated
    changes_the_pipeline: ClassVar[bool] = True  # gradients off on the denoiser, VAE and rewards while it runs
    run_defaults: ClassVar[dict] = {"num_inference_steps": 4}
    shapes_scorer: ClassVar[str] = "shapes-latent"

    iterations: int | None = None  # None: the pipeline's latentalign.json, else ReNO's 50
    lr: float = 5.0
    momentum: float = 0.9  # SGD with Nesterov momentum
    grad_clip: float = 0.1  # gradient-norm clipping
    reg_weight: float = 0.01  # lambda of the chi-norm regulariser
    gradient_checkpointing: bool = False  # recompute each denoiser step in the backward pass (less memory)
    rewards: tuple[Reward, ...] | None = None  # explicit rewards; else the scorer's for the prompt (plus avoid)
    scorer: Scorer | str | None = None  # the reward's scorer (None: the pipeline's latentalign.json, else default)
    avoid: str | None = None  # a concept to steer away from (Shapes: a colour or shape word)
    avoid_weight: float = 1.0
    on_iterate: Callable[[dict], None] | None = None  # gets {"row", "iteration", "latents", "reward"} per iterate

    def __post_init__(self):
        if self.iterations is not None:
            check_positive_int("iterations", self.iterations, minimum=0)
        for name in ("lr", "momentum", "grad_clip", "reg_weight", "avoid_weight"):
            check_finite(name, getattr(self, name), minimum=0)
        if self.rewards is not None:
            object.__setattr__(self, "rewards", tuple(self.rewards))
            if not self.rewards or not all(isinstance(r, Reward) for r in self.rewards):
                raise ValueError("rewards must be a non-empty list of latentalign.methods.Reward objects")
            if self.scorer is not None or self.avoid is not None:
                raise ValueError("pass rewards=..., or scorer/avoid to build them, not both")

    def defaults_not_applying(self) -> set[str]:
        # explicit rewards carry their own scorers: a recommended scorer would contradict them
        return {"scorer"} if self.rewards is not None else set()

    def prepare(self, run) -> NoiseOptimization:
        iterations = NOISE_OPTIMIZATION_ITERATIONS if self.iterations is None else self.iterations
        rewards = self.rewards
        if rewards is None:
            chosen = resolve_scorer(self.scorer, run.pipe, self.name, self.shapes_scorer)
            rewards = [Reward(chosen)]
            if self.avoid is not None:
                rewards.append(Reward(chosen, self.avoid_weight, concept_texts(run.pipe, self.avoid), avoid=True))
            rewards = tuple(rewards)
        for r in rewards:
            check_scorer_reads(r.scorer, run.den)
        return replace(self, iterations=iterations, rewards=rewards, scorer=None, avoid=None)

    def record(self) -> dict:
        out = {k: getattr(self, k) for k in ("iterations", "lr", "momentum", "grad_clip", "reg_weight")}
        out["rewards"] = [
            {"scorer": r.scorer.kind, "weight": r.weight, "prompt": r.prompt, "avoid": r.avoid} for r in self.rewards
        ]
        return out

    def initial_noise(self, run, noise, rows, generators):
        den, cost = run.den, run.cost
        for module in (den.model, den.vae, *[r.scorer for r in self.rewards]):
            module.requires_grad_(False)  # the run restores the user's flags afterwards
        out_noise, finished, histories, best_its, skipped = [], [], [], [], []
        for r in rows:
            cond = run.row_cond([r])
            prompt = run.prompt_of(r)
            # the optimised variable is the standard Gaussian noise (what the chi regulariser's norm is about); the
            # sampler scales it to its scheduler's start (sigma_max for Euler-type schedulers, 1 for DDIM/DDPM)
            z = noise[r : r + 1].float().clone().requires_grad_(True)
            opt = torch.optim.SGD([z], lr=self.lr, momentum=self.momentum, nesterov=self.momentum > 0)
            history, best, best_it, best_latents, best_z, bad = [], -math.inf, 0, None, None, 0
            for it in range(self.iterations + 1):  # iterate 0 scores the initial noise
                last = it == self.iterations
                with torch.enable_grad() if not last else torch.no_grad():  # gradients opened for this step only
                    schedulers = run.schedulers([clone_generator(generators[r])])  # the same function at every iterate
                    evals_before = cost.denoiser_evals
                    latents = differentiable_sample(den, z.to(den.dtype), cond, schedulers, self.gradient_checkpointing)
                    sampled_evals = cost.denoiser_evals - evals_before
                    reward = _reward(list(self.rewards), den, latents, prompt, cost)
                    loss = -reward.sum() + chi_regulariser(z, self.reg_weight).sum()
                value = float(reward.detach().sum())
                history.append(value)
                if self.on_iterate is not None:
                    self.on_iterate({"row": r, "iteration": it, "latents": latents.detach(), "reward": value})
                if value > best or best_latents is None:  # a NaN reward never wins, but iterate 0 is kept
                    best = value if math.isfinite(value) else -math.inf
                    best_it, best_latents, best_z = it, latents.detach(), z.detach().clone()
                if last:
                    break
                opt.zero_grad(set_to_none=True)
                evals_before = cost.denoiser_evals
                loss.backward()  # through every denoiser evaluation of the sampling
                # gradient checkpointing recomputes each forward once in the backward pass; counted here, as torch may
                # stop a recompute early before the adapter's own count
                cost.denoiser_evals = evals_before + (sampled_evals if self.gradient_checkpointing else 0)
                cost.denoiser_backwards += sampled_evals
                if not torch.isfinite(z.grad).all():
                    bad += 1  # a non-finite gradient never reaches the noise
                    continue
                torch.nn.utils.clip_grad_norm_([z], self.grad_clip)
                before = z.detach().clone()
                opt.step()
                if not torch.isfinite(z).all():
                    bad += 1
                    with torch.no_grad():
                        z.copy_(before)
            out_noise.append(best_z.to(noise.dtype))
            finished.append(best_latents)
            histories.append([v if math.isfinite(v) else None for v in history])  # None: a non-finite reward
            best_its.append(best_it)
            skipped.append(bad)
        run.outputs.update(rewards=histories, best_iteration=best_its, skipped_updates=skipped)
        return torch.cat(out_noise), torch.cat(finished)
