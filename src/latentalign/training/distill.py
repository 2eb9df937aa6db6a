"""Distil a pixel CLIP (VAE decode, then CLIP) into a Latent-CLIP that reads the latents without decoding.

The student keeps the teacher's vision transformer, projection, text tower and temperature; a convolutional stem
on the latent grid (`LatentStem`) replaces the teacher's patch embedding. One latent cell covers one teacher patch
(the VAE's 8x8 pixels are one patch of the resized image), so the stem learns the teacher's patch embedding of the
decoded image cell for cell (token distillation, as DeiT and TinyViT distil features), and the whole image tower
learns the teacher's final image embedding (cosine). The text tower stays frozen: the student scores every prompt
against exactly the teacher's text embeddings. The latents are the generator's own samples on train prompts,
encoded renders of train scenes, and a copy of each with Gaussian noise (noise optimisation moves latents off the
sample manifold).

With `student="noisy"` the student is a NoisyCLIP: its stem reads the noisy latent z_t beside a plane of t/1000, a
timestep embedding joins the class token, and the targets are the teacher's view of the denoiser's x0 prediction at
the same step, decoded (what pixel CLIP on the decoded x0 prediction sees, without the decode or the denoiser's
x0): the generator's trajectories on train prompts, every step of each, plus its final latents at t = 0.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel

from ..checkpoint import (
    checkpoint_exists,
    load_checkpoint,
    load_prompted_tensors,
    recover_checkpoint,
    save_checkpoint,
    save_prompted_tensors,
)
from ..scorers import LatentCLIPScorer, NoisyCLIPScorer, load_scorer, save_scorer
from ..scorers.base import clip_preprocess
from ..world.dataset import build_dataset
from .scorer import ScorerTrainConfig, reward_data, trajectory_data, zero_shot_accuracy
from .world import warmup_cosine_lr


@dataclass(frozen=True)
class DistillConfig:
    teacher: str = "shapes-pixel"  # a pixel scorer (saved folder or shipped name); it decodes with the pipeline's VAE
    # "latent": a Latent-CLIP of clean latents; "noisy": a NoisyCLIP of z_t, taught the teacher's view of the
    # decoded x0 prediction at every step of the generator's trajectories
    student: str = "latent"
    steps: int = 2000
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    stem_width: int = 128  # channels of the convolutional stem (the vision tower reads this many per cell)
    stem_layers: int = 3  # 3x3 convolutions: 3 see a 7x7-cell neighbourhood, the VAE decoder's reach
    token_weight: float = 1.0  # weight of the token term (stem vs teacher patch embeddings) beside the cosine term
    samples: int = 16384  # generator samples (noisy: trajectories) on train prompts, at the recommended settings
    samples_per_prompt: int = 4
    # encoded renders of train scenes (a posterior sample each); None: 8192 for a latent student, 0 for a noisy one
    # (whose latents are the trajectories' own)
    renders: int | None = None
    # each latent appears once more, plus Gaussian noise of U(0, perturb) latent stds; None: 0.5 for a latent
    # student, 0 for a noisy one (its latents are noisy already)
    perturb: float | None = None
    # noisy only: share of rows shown instead as their trajectory's final latents noised afresh to the row's
    # timestep (the forward process), with the final latents' targets: fresh noise every time, so the student cannot
    # learn one trajectory's noise by heart, and learns the teacher's expected view of the image z_t ends as
    renoise: float = 0.0
    # kept out of training, for the report's cosine to the teacher: latents (latent student) or trajectories with
    # all their steps (noisy student; whole prompt groups); None: 1024 latents, or 256 trajectories
    holdout: int | None = None
    # a distilled Latent-CLIP (saved folder or shipped name) to go on training instead of a fresh student
    init_from: str | None = None
    # noise optimisation (ReNO) runs on train prompts with `init_from` as the reward: its iterates join the latents,
    # so the student learns the teacher's view of where its own gradient ascent goes (as DAgger queries the expert
    # on the learner's own states)
    reward_samples: int = 0
    reward_iterations: int = 10
    category_weights: tuple[float, ...] = (0.1, 0.3, 0.35, 0.25)  # as the scorer trainer's
    checkpoint_every: int = 250
    eval_per_suite: int = 200  # held-out renders per suite in the closing zero-shot report
    seed: int = 0

    def __post_init__(self):
        if self.student not in ("latent", "noisy"):
            raise ValueError(f"student must be 'latent' or 'noisy', got {self.student!r}")
        noisy = self.student == "noisy"
        if self.renders is None:  # frozen: resolve the student's default once, so saved configs say it
            object.__setattr__(self, "renders", 0 if noisy else 8192)
        if self.perturb is None:
            object.__setattr__(self, "perturb", 0.0 if noisy else 0.5)
        if self.holdout is None:
            object.__setattr__(self, "holdout", 256 if noisy else 1024)
        if not (0 <= self.renoise <= 1) or (self.renoise and not noisy):
            raise ValueError(f"renoise must be in [0, 1], and is for a noisy student only; got {self.renoise}")
        if noisy and (self.renders or self.perturb or self.reward_samples or self.samples < 1):
            raise ValueError(
                "a noisy student learns from trajectories alone: samples >= 1, renders 0, perturb 0, reward_samples 0"
            )
        if self.steps < 1 or self.batch < 2 or self.warmup < 0:
            raise ValueError("steps must be >= 1, batch >= 2 and warmup >= 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.stem_width < 1 or self.stem_layers < 1:
            raise ValueError("stem_width and stem_layers must be >= 1")
        if not (math.isfinite(self.token_weight) and self.token_weight >= 0):
            raise ValueError(f"token_weight must be a finite number >= 0, got {self.token_weight}")
        if self.samples < 0 or self.renders < 0 or self.samples + self.renders < 1:
            raise ValueError("samples and renders must be >= 0, and not both 0")
        if self.samples_per_prompt < 1 or self.samples % self.samples_per_prompt:
            raise ValueError(f"samples_per_prompt must be >= 1 and divide samples ({self.samples})")
        if not (math.isfinite(self.perturb) and self.perturb >= 0):
            raise ValueError(f"perturb must be a finite number >= 0, got {self.perturb}")
        if self.holdout < 0 or self.holdout >= (self.samples if noisy else 2 * (self.samples + self.renders)):
            raise ValueError("holdout must be >= 0 and leave latents (noisy: trajectories) to train on")
        if self.reward_samples < 0 or self.reward_iterations < 1:
            raise ValueError("reward_samples must be >= 0 and reward_iterations >= 1")
        if self.reward_samples and self.init_from is None:
            raise ValueError("reward_samples needs init_from: the reward whose iterates the student learns")
        if self.init_from is not None:
            from ..scorers.factory import check_scorer_source

            check_scorer_source(self.init_from)


def student_from(
    teacher, latent_size: int, vae_scaling_factor: float, cfg: DistillConfig, latent_channels: int = 4
) -> LatentCLIPScorer | NoisyCLIPScorer:
    """A Latent-CLIP (or NoisyCLIP, for `cfg.student="noisy"`, with a zero timestep embedding) with a fresh stem and
    patch embedding, and every other weight copied from the pixel `teacher`.

    The teacher must see the latent grid as its patch grid: its image size over its patch size is `latent_size`.
    """
    vision = teacher.clip.config.vision_config
    if vision.image_size // vision.patch_size != latent_size:
        raise ValueError(
            f"the teacher's patch grid is {vision.image_size // vision.patch_size} a side and the latents "
            f"{latent_size}: a stem maps one latent cell to one teacher patch"
        )
    vision_config = vision.to_dict() | {"num_channels": cfg.stem_width, "image_size": latent_size, "patch_size": 1}
    config = CLIPConfig(
        text_config=teacher.clip.config.text_config.to_dict(),
        vision_config=vision_config,
        projection_dim=teacher.clip.config.projection_dim,
    )
    torch.manual_seed(cfg.seed)
    clip = CLIPModel(config)
    state = {k: v for k, v in teacher.clip.state_dict().items() if "patch_embedding" not in k}
    missing, unexpected = clip.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "patch_embedding" not in k]:
        raise ValueError(f"the teacher's weights do not fit the student: {unexpected or missing}")
    noisy = cfg.student == "noisy"
    stem = {"in_channels": latent_channels + noisy, "width": cfg.stem_width, "layers": cfg.stem_layers}
    kind = NoisyCLIPScorer if noisy else LatentCLIPScorer
    student = kind(clip, teacher.tokenizer, vae_scaling_factor, stem=stem)
    for p in [*clip.text_model.parameters(), *clip.text_projection.parameters(), clip.logit_scale]:
        p.requires_grad_(False)
    return student


def student_forward(
    student: LatentCLIPScorer | NoisyCLIPScorer, latents: torch.Tensor, t: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's patch embeddings (batch, cells, width) and L2-normalised image embeddings of the pipeline's
    latents (noisy student: at timesteps `t`, one per latent), from one pass of the stem (what `embed_images`
    computes, without running the stem twice)."""
    cells = student.stem_cells(latents, t)
    tokens = student.clip.vision_model.embeddings.patch_embedding(cells).flatten(2).transpose(1, 2)
    return tokens, F.normalize(student.tower_features(cells, t), dim=-1)


def init_student(student, start, teacher) -> None:
    """Load the distilled scorer `start` into `student`: one of its kind, or a distilled Latent-CLIP into a noisy
    student, whose stem's first convolution then gains a zero timestep channel (it starts as that Latent-CLIP on z_t).
    """
    widen = start.kind == "latent" and student.kind == "noisy"
    if start.kind not in ("latent", student.kind) or start.stem is None:
        raise ValueError(f"not a distilled Latent-CLIP (nor a distilled {student.kind} scorer)")
    same = {**start.stem.config, "in_channels": start.stem.config["in_channels"] + widen} == student.stem.config
    if not same or start.vae_scaling_factor != student.vae_scaling_factor:
        raise ValueError("a distilled scorer of another stem or VAE than these settings make")
    stem = start.stem.state_dict()
    if widen:
        first = stem["net.0.weight"]
        stem["net.0.weight"] = torch.cat([first, torch.zeros_like(first[:, :1])], dim=1)
    student.clip.load_state_dict(start.clip.state_dict())
    student.stem.load_state_dict(stem)
    if start.kind == student.kind == "noisy":
        student.timestep_embedding.load_state_dict(start.timestep_embedding.state_dict())
    theirs = teacher.clip.state_dict()
    if any(not torch.equal(v, theirs[k]) for k, v in start.clip.state_dict().items() if k.startswith("text")):
        raise ValueError("another text tower than the teacher's")


def teacher_tokens(teacher, pixels: torch.Tensor) -> torch.Tensor:
    """The teacher's patch embeddings (batch, patches, width) of preprocessed pixels."""
    return teacher.clip.vision_model.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)


def distillation_data(pipe, teacher, cfg: DistillConfig, path: Path, *, log=print) -> dict:
    """Latents (the pipeline's scaling), the teacher's preprocessed view of their decode and its image embeddings;
    cached atomically at `path` (the generator samples at `path`'s sibling trajectories.safetensors)."""
    if path.exists():
        data = load_prompted_tensors(path)
        expected = 2 * (cfg.samples + cfg.renders + cfg.reward_samples * cfg.reward_iterations)
        if cfg.student == "noisy":
            expected = cfg.samples * (pipe_steps(pipe) + 1)
        if len(data["latents"]) != expected:
            raise ValueError(f"{path} holds {len(data['latents'])} latents, these settings make {expected}; delete it")
        return data
    if cfg.student == "noisy":
        return noisy_distillation_data(pipe, teacher, cfg, path, log=log)
    scaling = float(pipe.vae.config.scaling_factor)
    parts, prompts = [], []
    if cfg.samples:
        sampling = _trajectory_sampling(cfg, "latent")
        traj = trajectory_data(pipe, sampling, path.parent / "trajectories.safetensors", log=log)
        parts.append(traj["final"])
        prompts += traj["prompts"]
    if cfg.reward_samples:
        ascent = ScorerTrainConfig(
            kind="latent",
            trajectory_share=0.5,
            init_from=cfg.init_from,
            reward_samples=cfg.reward_samples,
            reward_iterations=cfg.reward_iterations,
            category_weights=cfg.category_weights,
            seed=cfg.seed,
        )
        iterates = reward_data(pipe, ascent, path.parent / "reward_samples.safetensors", log=log)
        parts.append(iterates["final"])
        prompts += iterates["prompts"]
    if cfg.renders:
        images, captions = build_dataset(
            cfg.renders, seed=cfg.seed + 11, split="train", weights=list(cfg.category_weights)
        )
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        g = torch.Generator().manual_seed(cfg.seed + 5)
        with torch.no_grad():
            for chunk in tqdm(pixels.split(500), desc="encode renders"):
                dist = pipe.vae.encode(chunk * 2 - 1).latent_dist
                parts.append((dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)) * scaling)
        prompts += captions
    latents = torch.cat(parts)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    strength = cfg.perturb * latents.std() * torch.rand(len(latents), 1, 1, 1, generator=g)
    latents = torch.cat([latents, latents + strength * torch.randn(latents.shape, generator=g)])
    prompts = prompts + prompts
    views, embeddings = teacher_targets(teacher, latents)
    tensors = {"latents": latents, "teacher_view": views, "teacher_embedding": embeddings}
    save_prompted_tensors(path, tensors, prompts)
    log(
        f"distillation data: {len(latents)} latents ({cfg.samples} samples, {cfg.renders} renders, "
        f"{len(latents) // 2 - cfg.samples - cfg.renders} reward iterates; x2 perturbed)"
    )
    return {**tensors, "prompts": prompts}


def pipe_steps(pipe) -> int:
    """The denoising steps of `pipe`'s recommended schedule (the trajectories' length)."""
    from ..generation import sampling_defaults

    return sampling_defaults(pipe).num_inference_steps


def teacher_targets(teacher, latents: torch.Tensor, desc: str = "teacher") -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's preprocessed view (half precision) of the decoded latents and its normalised image embeddings."""
    size = teacher.clip.config.vision_config.image_size
    views, embeddings = [], []
    with torch.no_grad():
        for z in tqdm(latents.split(256), desc=desc):
            view = clip_preprocess(teacher.decode(z), size, teacher.image_mean, teacher.image_std)
            views.append(view.half())  # half the memory; the token targets need no more precision
            embeddings.append(F.normalize(teacher.clip.get_image_features(pixel_values=view).pooler_output, dim=-1))
    return torch.cat(views), torch.cat(embeddings)


def _trajectory_sampling(cfg: DistillConfig, kind: str) -> ScorerTrainConfig:
    """The scorer trainer's settings that make `cfg.samples` generator trajectories (shared caches, same prompts)."""
    return ScorerTrainConfig(
        kind=kind,
        trajectories=cfg.samples,
        trajectories_per_prompt=cfg.samples_per_prompt,
        category_weights=cfg.category_weights,
        seed=cfg.seed,
    )


def noisy_distillation_data(pipe, teacher, cfg: DistillConfig, path: Path, *, log=print) -> dict:
    """A noisy student's data: z_t at every step of the generator's trajectories on train prompts (and the final
    latents at t = 0), with the teacher's view of the decoded x0 prediction there (of the final latents at t = 0);
    `trajectory` numbers each row's trajectory. Cached atomically at `path`."""
    sampling = _trajectory_sampling(cfg, "noisy")
    traj = trajectory_data(pipe, sampling, path.parent / "trajectories.safetensors", log=log)
    n, steps = traj["latents"].shape[:2]
    latents = torch.cat([traj["latents"], traj["final"][:, None]], dim=1).flatten(0, 1)
    x0 = torch.cat([traj["x0"], traj["final"][:, None]], dim=1).flatten(0, 1)
    timesteps = torch.cat([traj["timesteps"].long(), torch.zeros(1, dtype=torch.long)]).repeat(n)
    views, embeddings = teacher_targets(teacher, x0, desc="teacher on x0 predictions")
    tensors = {
        "latents": latents,
        "timesteps": timesteps,
        "trajectory": torch.arange(n).repeat_interleave(steps + 1),
        "teacher_view": views,
        "teacher_embedding": embeddings,
    }
    prompts = [p for p in traj["prompts"] for _ in range(steps + 1)]
    save_prompted_tensors(path, tensors, prompts)
    log(f"distillation data: {n} trajectories x {steps + 1} steps (the last the final latents at t = 0)")
    return {**tensors, "prompts": prompts}


def distill_latent_clip(out: str | Path, cfg: DistillConfig, pipe, *, log=print) -> Path:
    """Distil `cfg.teacher` into a Latent-CLIP (or a NoisyCLIP, `cfg.student="noisy"`) for `pipe`'s VAE, into
    `out/scorer` (resumes from `out/checkpoint`); returns that folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    pipe.vae.requires_grad_(False)
    teacher = load_scorer(cfg.teacher, vae=pipe.vae).requires_grad_(False)
    if teacher.kind != "pixel":
        raise ValueError(f"the teacher must be a pixel scorer, got a {teacher.kind} scorer ({cfg.teacher})")
    scaling = float(pipe.vae.config.scaling_factor)
    latent_size = pipe.unet.config.sample_size
    student = student_from(teacher, latent_size, scaling, cfg, pipe.vae.config.latent_channels)
    if cfg.init_from is not None:
        try:
            init_student(student, load_scorer(cfg.init_from), teacher)
        except ValueError as err:
            raise ValueError(f"init_from {cfg.init_from!r}: {err}") from None
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = {"step": 0, "seconds": 0.0, "losses": {}, "config": json.loads(json.dumps(asdict(cfg)))}
    recover_checkpoint(ckpt)
    if checkpoint_exists(ckpt, meta["config"]):
        meta = load_checkpoint(ckpt, {"scorer": student}, opt)
        log(f"resuming from {ckpt} at step {meta['step']}")
    t_start = time.time() - meta["seconds"]

    data = distillation_data(pipe, teacher, cfg, out / "distillation.safetensors", log=log)
    latents, views, targets = data["latents"], data["teacher_view"], data["teacher_embedding"]
    timesteps = data.get("timesteps")  # noisy student only
    if timesteps is None:
        order = torch.randperm(len(latents), generator=torch.Generator().manual_seed(cfg.seed + 1))
        held, train = order[: cfg.holdout], order[cfg.holdout :]
    else:  # hold back whole prompts: the last trajectories (a prompt's seeds are consecutive trajectories)
        first_held = len(data["trajectory"].unique()) - cfg.holdout
        first_held -= first_held % cfg.samples_per_prompt
        is_held = data["trajectory"] >= first_held
        held, train = is_held.nonzero().flatten(), (~is_held).nonzero().flatten()
    with torch.no_grad():
        token_var = teacher_tokens(teacher, views[train[:1024]].float()).var()
    if cfg.renoise:
        from diffusers import DDPMScheduler

        forward_process = DDPMScheduler.from_config(pipe.scheduler.config)
        per_trajectory = int((data["trajectory"] == 0).sum())  # its steps, then its final latents at t = 0

    bar = tqdm(
        range(meta["step"], cfg.steps), desc=f"distil {student.kind} student", initial=meta["step"], total=cfg.steps
    )
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        j = train[torch.randint(0, len(train), (cfg.batch,), generator=g)]
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        z, t = latents[j], None if timesteps is None else timesteps[j]
        if cfg.renoise:  # these rows become their final latents, noised afresh to the row's timestep
            fresh = (torch.rand(len(j), generator=g) < cfg.renoise) & (t > 0)
            final = (j // per_trajectory + 1) * per_trajectory - 1
            noised = forward_process.add_noise(latents[final], torch.randn(z.shape, generator=g), t)
            z = torch.where(fresh[:, None, None, None], noised, z)
            j = torch.where(fresh, final, j)  # the targets of the final latents
        with torch.no_grad():
            target_tokens = teacher_tokens(teacher, views[j].float())
        student_tokens, image = student_forward(student, z, t)
        tokens = F.mse_loss(student_tokens, target_tokens) / token_var
        cosine = (1 - (image * targets[j]).sum(-1)).mean()
        loss = cfg.token_weight * tokens + cosine
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(tokens=f"{tokens.item():.3f}", cosine=f"{cosine.item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            meta.update(step=step + 1, seconds=time.time() - t_start)
            meta["losses"][str(step + 1)] = {"tokens": round(tokens.item(), 4), "cosine": round(cosine.item(), 4)}
            save_checkpoint(ckpt, {"scorer": student}, opt, meta)

    final = out / "scorer"
    student.eval()
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".scorer-"))
    save_scorer(student, tmp)
    report = {k: v for k, v in meta.items() if k != "param_groups"}
    report["seconds"] = round(time.time() - t_start, 1)
    with torch.no_grad():
        held_t = torch.zeros(len(held), dtype=torch.long) if timesteps is None else timesteps[held]
        parts = zip(latents[held].split(256), held_t.split(256), targets[held].split(256), strict=True)
        cos = torch.cat([(student.embed_images(z, t) * e).sum(-1) for z, t, e in parts]) if len(held) else None
    report["holdout_cosine"] = round(cos.mean().item(), 4) if cos is not None else None
    if timesteps is not None and cos is not None:  # by step: the early steps are where detection pays
        report["holdout_cosine_by_timestep"] = {
            str(int(t)): round(cos[held_t == t].mean().item(), 4) for t in held_t.unique(sorted=True).flip(0)
        }
    report["zero_shot"] = zero_shot_accuracy(student, pipe, split="heldout", per_suite=cfg.eval_per_suite)
    (tmp / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    log(
        f"saved {final} after {report['seconds'] / 60:.1f} min; cosine to the teacher on held-back latents "
        f"{report['holdout_cosine']}; zero-shot {report['zero_shot']}"
    )
    return final
