"""Pilot for issue 6: distil the shipped 20-step Shapes pipeline into a one-step generator, so noise optimisation
runs on the kind of generator ReNO and Latent-CLIP use (SD-Turbo style), where the decoder is a larger share of
an iteration.

Knowledge distillation (Luhman & Luhman, 2021): regress the teacher's deterministic DDIM map noise -> image.
1. pairs: N train-split prompts (the scorer training's category mix) with seeds from 20_000_000, the teacher's
   initial noise and final latents (its shipped defaults: 20 DDIM steps, guidance 1.5), cached atomically in
   OUT/pairs.safetensors;
2. student: a copy of the teacher's UNet that predicts the sample itself (`prediction_type="sample"`, so the one
   step is well conditioned at t = 999), trained so one DDIM step from the noise, unguided (one UNet call), lands
   on the teacher's final latents (MSE); AdamW, cosine learning rate, an atomic checkpoint every 250 steps, from
   which a rerun resumes;
3. OUT/pipeline: a stock StableDiffusionPipeline folder, the teacher's with the student's UNet and the scheduler
   set to predict the sample; its latentalign.json recommends 1 step at guidance 1.0;
4. train-split accuracy of teacher and student (24 prompts per suite x seeds 0-3), into OUT/report.json.

A pilot, not a shipped model: one run, no EMA. Held-out prompts are never touched here.

python benchmarks/one_step_pilot.py --pairs 4096 --steps 2000 --out runs/one_step
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import latentalign
from latentalign.adapters import Denoiser
from latentalign.checkpoint import (
    load_checkpoint,
    load_prompted_tensors,
    recover_checkpoint,
    save_checkpoint,
    save_prompted_tensors,
)
from latentalign.generate import DEFAULTS_FILE
from latentalign.pipeline import SHAPES, assemble
from latentalign.training.scorer import ScorerTrainConfig
from latentalign.world import SUITE_NAMES, check, suite
from latentalign.world.dataset import sample_prompts


def teacher_pairs(pipe, n: int, path: Path, batch: int = 64) -> dict:
    """(noise, final latents, prompts) of the teacher on n train prompts; cached atomically at `path`."""
    if path.exists():
        return load_prompted_tensors(path)
    weights = list(ScorerTrainConfig.category_weights)
    prompts = sample_prompts(n, random.Random(20), split="train", weights=weights)
    seeds = [20_000_000 + i for i in range(n)]
    den = Denoiser(pipe)
    noise, finals = [], []
    for i in tqdm(range(0, n, batch), desc="teacher pairs"):
        r = latentalign.generate(pipe, prompts[i : i + batch], seed=seeds[i : i + batch])
        noise.append(den.initial_latents(seeds[i : i + batch]))
        finals.append(r.latents)
    tensors = {"noise": torch.cat(noise).contiguous(), "final": torch.cat(finals).contiguous()}
    save_prompted_tensors(path, tensors, prompts)
    return {**tensors, "prompts": prompts}


def one_step(unet, scheduler, noise: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    """The student's single unguided DDIM step, exactly as the sampler takes it (differentiable)."""
    t = scheduler.timesteps[0]
    out = unet(scheduler.scale_model_input(noise, t), t, embeds).sample
    return scheduler.step(out, t, noise).prev_sample


def accuracy(pipe, per_suite: int = 24, seeds: int = 4) -> dict:
    out = {}
    for name in SUITE_NAMES:
        prompts = random.Random(1).sample(suite(name, "train"), min(per_suite, len(suite(name, "train"))))
        prompts = [p for p in prompts for _ in range(seeds)]
        ok = []
        for i in range(0, len(prompts), 64):
            chunk = prompts[i : i + 64]
            r = latentalign.generate(pipe, chunk, seed=[k % seeds for k in range(i, i + len(chunk))])
            ok += [check(im, p).ok for im, p in zip(r.images, chunk, strict=True)]
        out[name] = round(sum(ok) / len(ok), 4)
    out["overall"] = round(sum(out.values()) / len(SUITE_NAMES), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--eval-per-suite", type=int, default=24, help="train prompts per suite (x 4 seeds) judged")
    ap.add_argument("--out", default="runs/one_step")
    args = ap.parse_args()
    if args.pairs < 1 or args.steps < 1 or args.batch < 1 or not (math.isfinite(args.lr) and args.lr > 0):
        ap.error("--pairs, --steps and --batch must be >= 1 and --lr > 0")
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = latentalign.load_pipeline(SHAPES)
    teacher.set_progress_bar_config(disable=True)
    pairs = teacher_pairs(teacher, args.pairs, out / "pairs.safetensors")
    if len(pairs["prompts"]) != args.pairs:
        raise SystemExit(f"{out / 'pairs.safetensors'} holds {len(pairs['prompts'])} pairs, not {args.pairs}")

    with torch.no_grad():
        embeds = torch.cat(
            [
                teacher.encode_prompt(pairs["prompts"][i : i + 256], "cpu", 1, False)[0]
                for i in range(0, args.pairs, 256)
            ]
        )
    scheduler = Denoiser(teacher).new_scheduler(1, prediction_type="sample")
    student = copy.deepcopy(teacher.unet).train().requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "eval_per_suite")}
    meta = {"step": 0, "seconds": 0.0, "losses": {}, "config": config}
    ckpt = out / "checkpoint"
    recover_checkpoint(ckpt)
    if (ckpt / "meta.json").exists():
        saved = json.loads((ckpt / "meta.json").read_text())
        if saved["config"] != config:
            raise SystemExit(f"{ckpt} was written with other settings; use another --out")
        meta = load_checkpoint(ckpt, {"unet": student}, opt)
    start = time.time() - meta["seconds"]
    bar = tqdm(range(meta["step"], args.steps), desc="distil one step", initial=meta["step"], total=args.steps)
    for step in bar:
        g = torch.Generator().manual_seed(step)
        idx = torch.randint(0, args.pairs, (args.batch,), generator=g)
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.mse_loss(one_step(student, scheduler, pairs["noise"][idx], embeds[idx]), pairs["final"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % 250 == 0 or step + 1 == args.steps:
            meta.update(step=step + 1, seconds=time.time() - start)
            meta["losses"][str(step + 1)] = round(loss.item(), 5)
            save_checkpoint(ckpt, {"unet": student}, opt, meta)

    student.eval().requires_grad_(False)
    folder = out / "pipeline"
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".pipeline-"))
    components = dict(teacher.components)
    components.update(unet=student, scheduler=scheduler)
    for key in ("safety_checker", "feature_extractor", "image_encoder"):
        components.pop(key, None)
    assemble(components).save_pretrained(tmp, safe_serialization=True)
    settings = {"num_inference_steps": 1, "guidance_scale": 1.0, "world": SHAPES}
    (tmp / DEFAULTS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)

    student_pipe = latentalign.load_pipeline(str(folder))
    student_pipe.set_progress_bar_config(disable=True)
    report = {
        "config": config,
        "train_seconds": round(meta["seconds"], 1),
        "losses": meta["losses"],
        "teacher_train_accuracy": accuracy(teacher, args.eval_per_suite),
        "student_train_accuracy": accuracy(student_pipe, args.eval_per_suite),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
