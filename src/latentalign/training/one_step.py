"""Knowledge distillation (Luhman & Luhman, 2021) of a many-step pipeline into a one-step generator.

The student regresses the teacher's deterministic DDIM map, initial noise -> final latents, in one unguided UNet
call. It is the embedded world's SD-Turbo: the generator ReNO optimises through in one step, where the VAE
decode of a pixel reward is a large share of an iteration.
1. pairs: train-split prompts (the scorer training's category mix) with seeds from 20_000_000 (never a bench
   seed), the teacher's initial noise and final latents at its recommended settings, cached atomically;
2. student: a copy of the teacher's UNet that predicts the sample itself (`prediction_type="sample"`, so the one
   step is well conditioned at the first timestep), trained by MSE so one DDIM step from the noise lands on the
   teacher's latents; AdamW, warm-up and cosine learning rate, an EMA of the weights, atomic checkpoints from
   which a rerun resumes;
3. OUT/pipeline: a stock StableDiffusionPipeline folder, the teacher's with the student's (EMA) UNet and a
   scheduler set to predict the sample; its latentalign.json recommends 1 step at guidance 1.0.
Held-out prompts are never touched here.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..adapters import Denoiser
from ..checkpoint import (
    checkpoint_exists,
    load_checkpoint,
    load_prompted_tensors,
    recover_checkpoint,
    save_checkpoint,
    save_prompted_tensors,
)
from ..embedded import model_id, one_step_settings
from ..world import SUITE_NAMES, check, suite
from ..world.dataset import sample_prompts
from .scorer import ScorerTrainConfig
from .world import warmup_cosine_lr


@dataclass(frozen=True)
class OneStepTrainConfig:
    pairs: int = 4096  # teacher samples (noise, final latents) on train prompts
    steps: int = 2000
    batch: int = 64
    lr: float = 2e-4
    warmup: int = 100
    ema_decay: float = 0.999  # the shipped student is the EMA of the weights
    category_weights: tuple[float, ...] = ScorerTrainConfig.category_weights  # the scorers' train prompt mix
    pair_batch: int = 64  # teacher prompts per generate() call
    checkpoint_every: int = 250
    seed: int = 0  # seeds the prompt draw and the batch order

    def __post_init__(self):
        for name in ("pairs", "steps", "batch", "pair_batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if len(self.category_weights) != len(SUITE_NAMES) or min(self.category_weights) < 0:
            raise ValueError(f"category_weights needs {len(SUITE_NAMES)} weights >= 0, got {self.category_weights}")


def _config_json(cfg: OneStepTrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def teacher_pairs(teacher, cfg: OneStepTrainConfig, path: Path, *, log=print) -> dict:
    """(noise, final latents, prompts) of the teacher on `cfg.pairs` train prompts; cached atomically at `path`."""
    from ..generation import generate, sampling_defaults

    if path.exists():
        pairs = load_prompted_tensors(path)
        if len(pairs["prompts"]) != cfg.pairs:
            raise ValueError(f"{path} holds {len(pairs['prompts'])} pairs, not {cfg.pairs}; use another out folder")
        return pairs
    prompts = sample_prompts(cfg.pairs, random.Random(cfg.seed + 20), split="train", weights=list(cfg.category_weights))
    seeds = [20_000_000 + cfg.seed * cfg.pairs + i for i in range(cfg.pairs)]
    den = Denoiser(teacher)
    steps = sampling_defaults(teacher).num_inference_steps  # the teacher's own runs start where its noise is
    noise, finals = [], []
    for i in tqdm(range(0, cfg.pairs, cfg.pair_batch), desc="teacher pairs"):
        chunk = seeds[i : i + cfg.pair_batch]
        noise.append(den.start(chunk, steps)[0].cpu())
        finals.append(generate(teacher, prompts[i : i + cfg.pair_batch], seed=chunk).latents.cpu())
    tensors = {"noise": torch.cat(noise).contiguous(), "final": torch.cat(finals).contiguous()}
    save_prompted_tensors(path, tensors, prompts)
    log(f"teacher pairs: {cfg.pairs} saved to {path}")
    return {**tensors, "prompts": prompts}


def one_step(unet, scheduler, noise: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    """The student's single unguided DDIM step, exactly as the sampler takes it (differentiable)."""
    t = scheduler.timesteps[0]
    out = unet(scheduler.scale_model_input(noise, t), t, embeds).sample
    return scheduler.step(out, t, noise).prev_sample


def train_accuracy(pipe, per_suite: int = 24, seeds: int = 4) -> dict:
    """Exact-checker accuracy on `per_suite` train prompts per suite x `seeds` seeds, at the pipeline's defaults."""
    from ..generation import generate

    out = {}
    for name in SUITE_NAMES:
        prompts = random.Random(1).sample(suite(name, "train"), min(per_suite, len(suite(name, "train"))))
        prompts = [p for p in prompts for _ in range(seeds)]
        ok = []
        for i in range(0, len(prompts), 64):
            chunk = prompts[i : i + 64]
            r = generate(pipe, chunk, seed=[k % seeds for k in range(i, i + len(chunk))])
            ok += [check(im, p).ok for im, p in zip(r.images, chunk, strict=True)]
        out[name] = round(sum(ok) / len(ok), 4)
    out["overall"] = round(sum(out[name] for name in SUITE_NAMES) / len(SUITE_NAMES), 4)
    return out


def train_one_step(out: str | Path, cfg: OneStepTrainConfig, teacher, *, log=print) -> Path:
    """Distil `teacher` into `out/pipeline`, a one-step pipeline; resumes from `out/checkpoint` when present."""
    from ..generation import DEFAULTS_FILE, sampling_defaults
    from ..pipeline import assemble

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    recover_checkpoint(ckpt)
    meta = {"step": 0, "seconds": 0.0, "losses": {}, "config": _config_json(cfg)}
    checkpoint_exists(ckpt, meta["config"])  # refuse a mismatched resume before the teacher's samples are drawn
    teacher.set_progress_bar_config(disable=True)
    pairs = teacher_pairs(teacher, cfg, out / "pairs.safetensors", log=log)
    den = Denoiser(teacher)
    device = den.device
    with torch.no_grad():
        embeds = torch.cat(
            [den.encode(pairs["prompts"][i : i + 256], 1.0).prompt_embeds.cpu() for i in range(0, cfg.pairs, 256)]
        )
    noise, final = pairs["noise"], pairs["final"]

    scheduler = den.new_scheduler(1, prediction_type="sample")
    student = copy.deepcopy(teacher.unet).float().train().requires_grad_(True)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    modules = {"unet": student, "ema_unet": ema}
    if (ckpt / "meta.json").exists():
        meta = load_checkpoint(ckpt, modules, opt)
        log(f"resuming from {ckpt}: step {meta['step']}")
    start = time.time() - meta["seconds"]
    bar = tqdm(range(meta["step"], cfg.steps), desc="distil one step", initial=meta["step"], total=cfg.steps)
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, cfg.pairs, (cfg.batch,), generator=g)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        pred = one_step(student, scheduler, noise[idx].to(device), embeds[idx].to(device))
        loss = F.mse_loss(pred, final[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(student.parameters()), 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            meta.update(step=step + 1, seconds=time.time() - start)
            meta["losses"][str(step + 1)] = round(loss.item(), 6)
            save_checkpoint(ckpt, modules, opt, meta)

    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".pipeline-"))
    components = {k: v for k, v in teacher.components.items() if k not in ("safety_checker", "feature_extractor")}
    components.pop("image_encoder", None)
    if teacher.unet.dtype != torch.float32:
        ema = ema.to(teacher.unet.dtype)
    components.update(unet=ema, scheduler=scheduler)
    assemble(components).save_pretrained(tmp, safe_serialization=True)
    settings = one_step_settings(sampling_defaults(teacher).world)
    (tmp / DEFAULTS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    report = {k: v for k, v in meta.items() if k != "param_groups"}
    report["teacher"] = model_id(teacher)
    (tmp / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    final_dir = out / "pipeline"
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)
    log(f"saved {final_dir} after {meta['seconds'] / 60:.1f} min of training")
    return final_dir
