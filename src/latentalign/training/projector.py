"""Training a noise projector (arXiv 2510.14526) with a differentiable reward through a short generator.

The paper scores images token by token with a VLM, distils those scores into a reward model that reads the noise,
and fine-tunes the projector with a quasi-DPO objective under a KL constraint. Here the reward is a differentiable
scorer (on the Shapes world the distilled Latent-CLIP, never the exact checker, which is the judge) read through
the generator itself, as ReNO reads it: a one-step pipeline makes that one UNet call. So the gradient of the reward
is available and the projector ascends it directly; what is kept from the paper is the projector, the
reparameterised output and the KL term that holds the refined noise near N(0, I). The paper's warm-up (KL plus
reconstruction of the input noise) is not needed: the projector's zero-initialised output layer starts at the
identity, where that warm-up ends.

1. prompts: a pool of train-split prompts (the scorers' category mix); noise from seeds 30_000_000 on (never a bench
   seed), fresh at every step;
2. each step: refined = mu + sigma * noise; latents = the pipeline's differentiable sampler from the refined noise
   at its noise-optimisation step count; loss = -reward(latents, prompt) + kl_weight * KL(N(mu, sigma^2) || N(0, I))
   (summed over the latent's elements, like ReNO's regulariser); AdamW, warm-up and cosine learning rate, gradient
   clipping, atomic checkpoints from which a rerun resumes;
3. OUT/projector: what `save_projector` writes, with the training record.
Held-out prompts are never touched here.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..adapters import Denoiser
from ..checkpoint import checkpoint_exists, load_checkpoint, recover_checkpoint, save_checkpoint
from ..embedded import model_id
from ..generation import sampling_defaults
from ..methods.noise_optimization import differentiable_sample, recommended_steps
from ..methods.noise_projection import NoiseProjector, NoiseProjectorConfig, projection_kl, save_projector
from ..scorers import Scorer
from ..world import SUITE_NAMES
from ..world.dataset import sample_prompts
from .scorer import ScorerTrainConfig
from .world import warmup_cosine_lr

NOISE_SEED_BASE = 30_000_000


@dataclass(frozen=True)
class ProjectorTrainConfig:
    steps: int = 1500
    batch: int = 32
    lr: float = 3e-4
    warmup: int = 100
    # tau, beside a cosine reward in [-1, 1]; chosen on train prompts among 0.01 (holds the projector at the identity),
    # 0.001 and 0.0001 (benchmarks/results/noise_projection_train/)
    kl_weight: float = 0.0001
    width: int = 128  # the projector's architecture (NoiseProjectorConfig)
    layers: int = 2
    heads: int = 4
    prompt_pool: int = 8192  # train prompts drawn once; each step samples a batch of them
    category_weights: tuple[float, ...] = ScorerTrainConfig.category_weights  # the scorers' train prompt mix
    checkpoint_every: int = 250
    seed: int = 0  # seeds the prompt pool, the batch order and the noise

    def __post_init__(self):
        for name in ("steps", "batch", "prompt_pool", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {self.kl_weight}")
        if self.warmup < 0 or self.seed < 0:
            raise ValueError("warmup and seed must be >= 0")
        if len(self.category_weights) != len(SUITE_NAMES) or min(self.category_weights) < 0:
            raise ValueError(f"category_weights needs {len(SUITE_NAMES)} weights >= 0, got {self.category_weights}")
        NoiseProjectorConfig(width=self.width, layers=self.layers, heads=self.heads)  # refuse a bad architecture now


def train_projector(
    out: str | Path, cfg: ProjectorTrainConfig, pipe, scorer: Scorer, *, scorer_name: str | None = None, log=print
) -> Path:
    """Train a projector for `pipe` against `scorer`'s reward (`scorer_name` is recorded); writes `out/projector`
    and resumes from `out/checkpoint`."""
    if scorer.space == "noisy_latents" and scorer.needs_t:
        raise ValueError("the projector's reward reads the final latents: a noisy scorer that needs t cannot")
    if sampling_defaults(pipe).world != "shapes":
        raise ValueError("train projector draws its prompts from the Shapes world's train split")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    recover_checkpoint(ckpt)
    config = json.loads(json.dumps(asdict(cfg)))
    meta = {"step": 0, "seconds": 0.0, "log": {}, "config": config}
    checkpoint_exists(ckpt, config)  # refuse a mismatched resume before any work

    den = Denoiser(pipe)
    steps = recommended_steps(pipe)
    scale = sampling_defaults(pipe).guidance_scale
    for module in (den.model, den.vae, scorer):
        module.requires_grad_(False)
    arch = NoiseProjectorConfig(
        latent_channels=den.latent_shape[0], text_dim=den.text_dim, width=cfg.width, layers=cfg.layers, heads=cfg.heads
    )
    torch.manual_seed(cfg.seed)
    projector = NoiseProjector(arch).to(den.device).train()
    opt = torch.optim.AdamW(projector.parameters(), lr=cfg.lr, weight_decay=0.0)
    if (ckpt / "meta.json").exists():
        meta = load_checkpoint(ckpt, {"projector": projector}, opt)
        log(f"resuming from {ckpt}: step {meta['step']}")
    rng = random.Random(cfg.seed + 30)
    pool = sample_prompts(cfg.prompt_pool, rng, split="train", weights=list(cfg.category_weights))

    start = time.time() - meta["seconds"]
    bar = tqdm(range(meta["step"], cfg.steps), desc="train projector", initial=meta["step"], total=cfg.steps)
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        prompts = [pool[i] for i in torch.randint(0, cfg.prompt_pool, (cfg.batch,), generator=g).tolist()]
        seeds = [NOISE_SEED_BASE + (cfg.seed * cfg.steps + step) * cfg.batch + i for i in range(cfg.batch)]
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        with torch.no_grad():
            cond = den.encode(prompts, scale)
        noise = den.initial_noise(seeds).float()
        mu, log_sigma = projector(noise, cond.prompt_embeds)
        refined = mu + log_sigma.exp() * noise
        latents = differentiable_sample(den, refined.to(den.dtype), cond, den.start(seeds, steps)[1])
        x = den.decode(latents) if scorer.space == "pixels" else latents
        reward = scorer.score(x, prompts).float()  # a judge reads the final latents as clean (t = 0)
        kl = projection_kl(mu, log_sigma)
        loss = (-reward + cfg.kl_weight * kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
        opt.step()
        bar.set_postfix(reward=f"{reward.mean().item():.4f}", kl=f"{kl.mean().item():.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            meta.update(step=step + 1, seconds=time.time() - start)
            meta["log"][str(step + 1)] = {"reward": round(reward.mean().item(), 5), "kl": round(kl.mean().item(), 4)}
            save_checkpoint(ckpt, {"projector": projector}, opt, meta)

    record = {k: v for k, v in meta.items() if k != "param_groups"}
    record.update(pipeline=model_id(pipe), scorer=scorer_name, generator_steps=steps, guidance_scale=scale)
    folder = save_projector(projector.eval(), out / "projector", extra={"training": record})
    log(f"saved {folder} after {meta['seconds'] / 60:.1f} min of training")
    return folder
