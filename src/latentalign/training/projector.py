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

`recipe="paper"` trains it the paper's way instead, against a noise reward model R(noise, prompt) -> per-word
log-odds (`latentalign train noise-reward`, distilled from the checker's word verdicts):
1. the projector's output layer starts random (std `init_scale`), as a fresh network would, and `warmup_steps` of
   warm-up (KL to N(0, I) plus reconstruction of the input noise, squared error summed over elements) bring it
   back near the identity; no generator call is made;
2. quasi-DPO: for each (noise, prompt), the pair (refined, original) is judged by R. The loss is the negative log
   of the Bradley-Terry probability that R prefers the refined noise, word by word,
       softplus(-beta * (R_w(refined) - R_w(original)))
   weighted by how much the original misses the word, 1 - sigmoid(R_w(original)), averaged over the prompt's
   scored words, plus the same term on R's image log-odds (`image_weight`), plus kl_weight * KL. So it is DPO with
   the policy's log-ratio replaced by R's margin (the paper's "quasi"): a word the original noise already gets is
   left alone, and a preference once won stops pulling, which bounds how far the KL lets the noise move.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..adapters import Denoiser
from ..checkpoint import checkpoint_exists, load_checkpoint, recover_checkpoint, save_checkpoint
from ..embedded import model_id
from ..generation import sampling_defaults
from ..methods.noise_optimization import differentiable_sample, recommended_steps
from ..methods.noise_projection import NoiseProjector, NoiseProjectorConfig, projection_kl, save_projector
from ..scorers import Scorer
from ..scorers.noise_reward import NoiseRewardModel
from ..scorers.token_judges import scored_word_mask
from ..world import SUITE_NAMES
from ..world.dataset import sample_prompts
from .scorer import ScorerTrainConfig
from .world import warmup_cosine_lr

NOISE_SEED_BASE = 30_000_000


RECIPES = ("reward", "paper")
# the paper recipe's settings of the shipped paper-style projectors; tau (the KL weight, beside R's log-odds margins)
# chosen on TRAIN prompts among 0.01, 0.001 and 0.0001 (benchmarks/results/noise_projection_paper/kl_choice_one_step/:
# 0.432, 0.444, 0.437 against plain 0.444: no tau helps there, 0.001 scored highest)
PAPER_SETTINGS = {"steps": 500, "warmup_steps": 150, "kl_weight": 0.001}


@dataclass(frozen=True)
class ProjectorTrainConfig:
    recipe: str = "reward"  # "reward": ascend a differentiable scorer; "paper": warm-up, then quasi-DPO against R
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
    # the paper recipe (recipe="paper"); steps counts the warm-up steps too
    warmup_steps: int = 150  # KL + reconstruction, from a random output layer
    init_scale: float = 0.01  # std of the output layer's random start
    recon_weight: float = 1.0
    dpo_beta: float = 1.0
    image_weight: float = 1.0

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.recipe == "paper" and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        for name in ("init_scale", "recon_weight", "dpo_beta", "image_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
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


def quasi_dpo_loss(
    words: torch.Tensor, image: torch.Tensor, base_words: torch.Tensor, base_image: torch.Tensor,
    mask: torch.Tensor, beta: float, image_weight: float,
) -> torch.Tensor:  # fmt: skip
    """Per sample: the weighted negative log-probability that R prefers the refined noise (log-odds `words`, (B, W),
    and `image`, (B,)) over the original (`base_*`, no gradient), over the scored words (`mask`) and the image."""
    base_words, base_image = base_words.detach(), base_image.detach()
    weight = (1 - torch.sigmoid(base_words)) * mask
    per_word = (weight * F.softplus(-beta * (words - base_words))).sum(1) / mask.sum(1).clamp_min(1)
    return per_word + image_weight * (1 - torch.sigmoid(base_image)) * F.softplus(-beta * (image - base_image))


def train_projector(
    out: str | Path, cfg: ProjectorTrainConfig, pipe, scorer: Scorer | NoiseRewardModel, *,
    scorer_name: str | None = None, log=print,
) -> Path:  # fmt: skip
    """Train a projector for `pipe` against `scorer`'s reward (recipe "reward": a differentiable scorer; "paper": a
    `NoiseRewardModel`), `scorer_name` recorded; writes `out/projector` and resumes from `out/checkpoint`."""
    paper = cfg.recipe == "paper"
    if paper != isinstance(scorer, NoiseRewardModel):
        raise ValueError("recipe 'paper' trains against a noise reward model (latentalign train noise-reward), and "
                         "recipe 'reward' against a scorer")  # fmt: skip
    if not paper and scorer.space == "noisy_latents" and scorer.needs_t:
        raise ValueError("the projector's reward reads the final latents: a noisy scorer that needs t cannot")
    if sampling_defaults(pipe).world != "shapes":
        raise ValueError("train projector draws its prompts from the Shapes world's train split")
    scale = sampling_defaults(pipe).guidance_scale
    if paper and (scorer.guidance_scale != scale or scorer.pipeline not in (None, model_id(pipe))):
        raise ValueError(
            f"this noise reward model was trained on {scorer.pipeline} at guidance {scorer.guidance_scale}; the "
            f"projector is for {model_id(pipe)} at {scale}: train a reward model on it (latentalign train noise-reward)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    recover_checkpoint(ckpt)
    config = json.loads(json.dumps({**asdict(cfg), "pipeline": model_id(pipe), "scorer": scorer_name}))
    meta = {"step": 0, "seconds": 0.0, "log": {}, "config": config}
    checkpoint_exists(ckpt, config)  # refuse a mismatched resume before any work

    den = Denoiser(pipe)
    steps = recommended_steps(pipe)
    for module in (den.model, den.vae, scorer):  # a reward model's judge too
        module.requires_grad_(False)
    arch = NoiseProjectorConfig(
        latent_channels=den.latent_shape[0], text_dim=den.text_dim, width=cfg.width, layers=cfg.layers, heads=cfg.heads
    )
    torch.manual_seed(cfg.seed)
    projector = NoiseProjector(arch).to(den.device).train()
    if paper:  # a fresh output layer, as the paper's network starts; the warm-up brings it near the identity
        nn.init.normal_(projector.out.weight, std=cfg.init_scale)
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
        kl = projection_kl(mu, log_sigma)
        if paper and step < cfg.warmup_steps:  # warm-up: KL + reconstruction, no generator call
            reward = -(refined - noise).pow(2).flatten(1).sum(1)
            loss = (cfg.recon_weight * -reward + kl).mean()
        elif paper:
            with torch.no_grad():
                base_words, base_image = scorer(den, noise, prompts, seeds, cond)
            words, image = scorer(den, refined, prompts, seeds, cond)
            mask = scored_word_mask(prompts, words.shape[1]).to(words)
            dpo = quasi_dpo_loss(words, image, base_words, base_image, mask, cfg.dpo_beta, cfg.image_weight)
            reward = -dpo  # what the bar and the log show
            loss = (dpo + cfg.kl_weight * kl).mean()
        else:
            with den.compact_repeated_text(cond) as compact:  # SD3's zero T5 block as one row: 5x cheaper
                latents = differentiable_sample(den, refined.to(den.dtype), compact, den.start(seeds, steps)[1])
            x = den.decode(latents) if scorer.space == "pixels" else latents
            reward = scorer.score(x, prompts).float()  # a judge reads the final latents as clean (t = 0)
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
    if paper:
        record.update(generator_steps=None, preview_steps=scorer.preview_steps)
    folder = save_projector(projector.eval(), out / "projector", extra={"training": record})
    log(f"saved {folder} after {meta['seconds'] / 60:.1f} min of training")
    return folder
