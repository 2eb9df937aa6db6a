"""Train the Shapes scorers (pixel CLIP, Latent-CLIP, NoisyCLIP) contrastively, with grammar hard negatives.

InfoNCE (CLIP, Radford et al., 2021) where every image also faces captions that differ from its own in exactly one
colour, shape, relation or count (as NoisyCLIP trains with corrupted prompts). A scorer can also learn from a
generator's own samples on train prompts (the noisy scorer does by default, from z_t along their trajectories; a
Latent-CLIP or pixel CLIP from the final latents or their decode): a sample the exact checker rejected is a hard
negative image for its prompt.
Runs as one process, or as several: `accelerate launch --multi_gpu --num_processes 2 -m latentalign.cli train
scorer ...` (accelerate's flag; on a machine without GPUs it starts CPU processes that talk over gloo). Each process
takes its slice of the same global batch and DDP averages the gradients.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..adapters import Denoiser
from ..checkpoint import (
    checkpoint_exists,
    load_checkpoint,
    load_prompted_tensors,
    publish_folder,
    recover_checkpoint,
    save_checkpoint,
    save_prompted_tensors,
)
from ..scorers import NoisyCLIPScorer, Scorer, build_shapes_scorer, fit_preview_map, load_scorer, save_scorer
from ..scorers.factory import check_vision_size
from ..world import SUITE_NAMES, check, corrupt, inverse_phrasing, parse, suite
from ..world.dataset import build_dataset
from .world import warmup_cosine_lr

KINDS = ("pixel", "latent", "noisy")


@dataclass(frozen=True)
class ScorerTrainConfig:
    kind: str = "latent"  # "pixel" (rendered RGB), "latent" (VAE latents) or "noisy" (z_t and t)
    steps: int = 3000
    batch: int = 128  # global batch; each of P processes takes batch / P of it
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    hard_negatives: int = 3  # corrupted captions per image
    pool_size: int = 20000  # rendered scenes
    split: str = "train"  # never "heldout": held-out prompts are for evaluation only
    # category shares (single_object, two_objects, relation, counting): the composite ones carry the hard cases
    category_weights: tuple[float, ...] = (0.1, 0.3, 0.35, 0.25)
    inverse_phrasing: float = 0.5  # caption a relation scene from its other object this often
    trajectories: int = 3072  # generator samples (train prompts of `pipe`, at its recommended settings) recorded
    # share of each batch drawn from those samples, the rest renders: noisy reads z_t at a random step, latent the
    # final latents, pixel their decode (None: 0.5 for noisy, 0 for the others, which then train on renders alone).
    # Samples the exact checker rejects are hard negative images for their prompt.
    trajectory_share: float | None = None
    # seeds per trajectory prompt (`trajectories` samples over trajectories / this many prompts); above 1, prompts
    # have both samples the checker accepts and samples it rejects
    trajectories_per_prompt: int = 1
    # weight of a within-prompt ranking term (Bradley-Terry, the within-prompt AUROC's own question): the trajectory
    # share of each batch comes in pairs of one prompt (at one step, for noisy), one sample the checker accepts and
    # one it rejects, and the term is a logistic loss on their caption scores' difference
    ranking_weight: float = 0.0
    # pixel/latent only: noise optimisation (ReNO) runs on train prompts with `init_from` as the reward; every
    # iterate after the first joins the generator samples, labelled by the checker, so the scorer learns from the
    # latents its own gradient ascent finds (an accepted iterate against a rejected one of the same prompt)
    reward_samples: int = 0
    reward_iterations: int = 10  # ReNO iterations per reward-sample run
    # noisy only: share of trajectory samples whose z_t is replaced by the sample's final latents noised afresh to
    # the same timestep, so the scorer sees each sample's content under many noise draws (not one trajectory's)
    renoise: float = 0.0
    noisy_reads: str = "preview"  # noisy only: "preview" (published layout, shipped) or "latents" (the channels)
    # weight of a per-image verdict term: logistic loss on (score of own caption - best score of its hard
    # negatives) against the image's aligned label, so misaligned trajectories rank below their corruptions
    verdict_weight: float = 0.0
    # a saved scorer folder (or shipped name, "shapes-noisy") to fine-tune instead of starting from random weights;
    # its kind (and, for noisy, what it reads) must agree with `kind`/`noisy_reads`; a noisy scorer that reads
    # latents may also start from a Latent-CLIP ("shapes-latent")
    init_from: str | None = None
    # noisy only: weight of a distillation term on trajectory samples, the KL from the `teacher` scorer's caption
    # distribution (own caption + its hard negatives) on the decoded x0 prediction to the NoisyCLIP's on z_t
    distill_weight: float = 0.0
    teacher: str = "shapes-pixel"
    # what the teacher reads: "current", the x0 prediction at the sample's own step, or "final", the trajectory's
    # last x0 prediction (the image the run ends with), so the student learns to foresee the final ranking
    distill_target: str = "current"
    # image tower size (None: the shipped configs/shapes_clip_<kind>.json, width 64 and 2 layers); not with init_from
    vision_width: int | None = None
    vision_layers: int | None = None
    checkpoint_every: int = 250
    eval_per_suite: int = 200  # held-out renders per suite in the closing zero-shot report
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown scorer kind {self.kind!r}: choose from {', '.join(KINDS)}")
        if self.split == "heldout":
            raise ValueError("scorers never train on the held-out split")
        if self.steps < 1 or self.batch < 2 or self.hard_negatives < 0:
            raise ValueError("steps must be >= 1, batch >= 2 and hard_negatives >= 0")
        if self.eval_per_suite < 1:  # the closing report needs renders: 0 would fail after the whole training
            raise ValueError(f"eval_per_suite must be >= 1, got {self.eval_per_suite}")
        if self.noisy_reads not in ("latents", "preview"):
            raise ValueError(f"noisy_reads must be 'latents' or 'preview', got {self.noisy_reads!r}")
        if not (math.isfinite(self.verdict_weight) and self.verdict_weight >= 0):
            raise ValueError(f"verdict_weight must be a finite number >= 0, got {self.verdict_weight}")
        if self.verdict_weight > 0 and self.hard_negatives < 1:
            raise ValueError("verdict_weight needs hard_negatives >= 1")
        if self.trajectory_share is None:  # frozen: resolve the kind's default once, so saved configs say it
            object.__setattr__(self, "trajectory_share", 0.5 if self.kind == "noisy" else 0.0)
        if not 0 <= self.trajectory_share <= 1:
            raise ValueError(f"trajectory_share must be in [0, 1], got {self.trajectory_share}")
        if not 0 <= self.renoise <= 1 or (self.renoise > 0 and (self.kind != "noisy" or self.trajectory_share == 0)):
            raise ValueError(
                f"renoise must be in [0, 1] and needs kind 'noisy' with trajectory_share > 0, got {self.renoise}"
            )
        if self.reward_samples < 0 or self.reward_iterations < 1:
            raise ValueError("reward_samples must be >= 0 and reward_iterations >= 1")
        if self.reward_samples and (self.kind == "noisy" or self.init_from is None or self.trajectory_share == 0):
            raise ValueError(
                "reward_samples needs kind pixel or latent, init_from (the reward) and trajectory_share > 0"
            )
        if not (math.isfinite(self.distill_weight) and self.distill_weight >= 0):
            raise ValueError(f"distill_weight must be a finite number >= 0, got {self.distill_weight}")
        if self.distill_target not in ("current", "final"):
            raise ValueError(f"distill_target must be 'current' or 'final', got {self.distill_target!r}")
        if self.distill_weight > 0 and (self.kind != "noisy" or self.trajectory_share == 0 or self.hard_negatives < 1):
            raise ValueError("distill_weight needs kind 'noisy', trajectory_share > 0 and hard_negatives >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.trajectories_per_prompt < 1 or self.trajectories % self.trajectories_per_prompt:
            raise ValueError(
                f"trajectories_per_prompt must be >= 1 and divide trajectories ({self.trajectories}), "
                f"got {self.trajectories_per_prompt}"
            )
        if not (math.isfinite(self.ranking_weight) and self.ranking_weight >= 0):
            raise ValueError(f"ranking_weight must be a finite number >= 0, got {self.ranking_weight}")
        if self.ranking_weight > 0 and (
            self.trajectories_per_prompt < 2 or round(self.trajectory_share * self.batch) < 2
        ):
            raise ValueError(
                "ranking_weight needs trajectories_per_prompt >= 2 and at least 2 trajectory samples per batch "
                "(trajectory_share * batch)"
            )
        check_vision_size(self.vision_width, self.vision_layers)
        if self.init_from is not None and (self.vision_width or self.vision_layers):
            raise ValueError("a fine-tuned scorer keeps init_from's size: drop vision_width/vision_layers")
        if self.init_from is not None:
            from ..scorers.factory import check_scorer_source

            check_scorer_source(self.init_from)


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE with hard-negative captions and images that share no positive (open_clip-style dict)."""

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        captions: list[str],
        aligned: torch.Tensor,
        logit_scale: torch.Tensor,
        hard_negatives: int = 0,
        verdict_weight: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """`image` (B, D) and `text` (T >= B, D) are L2-normalised; text row i < B is image i's caption, rows >= B
        are hard negatives, `hard_negatives` per image in image order. Images with `aligned` False have no
        positive: they only serve as negatives for their own caption (and any other). With `verdict_weight`,
        each image also gets a logistic loss on (own caption - best own hard negative) against `aligned`."""
        b = image.shape[0]
        logits = logit_scale * image @ text.T
        same = torch.tensor([[a == c for c in captions[:b]] for a in captions[:b]], device=image.device)
        eye = torch.eye(b, dtype=torch.bool, device=image.device)
        rows = aligned.nonzero().flatten()
        # image -> text: another copy of my own caption is not a negative
        i2t = logits.clone()
        i2t[:, :b] = i2t[:, :b].masked_fill(same & ~eye, float("-inf"))
        image_to_text = F.cross_entropy(i2t[rows], rows)
        # text -> image: an aligned image with my caption is not a negative; a misaligned one is a hard negative
        t2i = logits[:, :b].T.masked_fill(same & ~eye & aligned[None, :], float("-inf"))
        text_to_image = F.cross_entropy(t2i[rows], rows)
        loss = (image_to_text + text_to_image) / 2
        out = {"image_to_text": image_to_text.detach(), "text_to_image": text_to_image.detach()}
        if verdict_weight > 0:
            idx = torch.arange(b, device=image.device)
            columns = b + idx[:, None] * hard_negatives + torch.arange(hard_negatives, device=image.device)
            own_negatives = logits[idx[:, None], columns]
            margin = logits[idx, idx] - own_negatives.max(dim=1).values
            verdict = F.binary_cross_entropy_with_logits(margin, aligned.float())
            loss = loss + verdict_weight * verdict
            out["verdict"] = verdict.detach()
        return {"loss": loss, **out}


def distillation_kl(
    student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor, hard_negatives: int
) -> torch.Tensor:
    """Mean KL(teacher || student) of each row's distribution over its own caption and its hard negatives.

    `student`/`teacher` are (B, B + B * hard_negatives) logit matrices laid out as in `ContrastiveLoss`; `rows`
    picks the images that have a teacher (trajectory samples)."""
    b = student.shape[0]
    columns = torch.cat(
        [rows[:, None], b + rows[:, None] * hard_negatives + torch.arange(hard_negatives, device=rows.device)], dim=1
    )
    s = F.log_softmax(student[rows[:, None], columns], dim=1)
    t = F.log_softmax(teacher[rows[:, None], columns], dim=1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


class _Pair(nn.Module):
    """Image and text towers in one forward, so DistributedDataParallel sees one call per step."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.scorer = scorer

    def forward(self, x: torch.Tensor, t: torch.Tensor | None, captions: list[str]):
        return self.scorer.embed_images(x, t), self.scorer.embed_text(captions), self.scorer.clip.logit_scale.exp()


def _caption(prompt: str, rng: random.Random, share: float, allowed: set[str]) -> str:
    if parse(prompt).relation and rng.random() < share:
        inverse = inverse_phrasing(prompt)
        return inverse if inverse in allowed else prompt
    return prompt


def trajectory_data(pipe, cfg: ScorerTrainConfig, path: Path, *, log=print) -> dict:
    """Generator trajectories on train prompts, labelled by the exact checker; cached atomically at `path`."""
    if path.exists():
        return load_prompted_tensors(path)
    from ..trajectories import record_trajectories
    from ..world.dataset import sample_prompts

    rng = random.Random(cfg.seed + 7)
    categories = SUITE_NAMES
    k = cfg.trajectories_per_prompt
    prompts = sample_prompts(cfg.trajectories // k, rng, split=cfg.split, weights=list(cfg.category_weights))
    prompts = [p for p in prompts for _ in range(k)]
    seeds = [10_000_000 + cfg.seed * cfg.trajectories + i for i in range(len(prompts))]  # never a bench seed
    traj = record_trajectories(pipe, prompts, seeds)
    aligned = torch.tensor([check(im, p).ok for im, p in zip(traj.images, prompts, strict=True)])
    log(f"trajectories: {len(prompts)} samples over {len(categories)} categories, {aligned.float().mean():.3f} aligned")
    tensors = {
        "latents": traj.latents,
        "x0": traj.x0,
        "final": traj.final,
        "timesteps": traj.timesteps,
        "aligned": aligned,
    }
    save_prompted_tensors(path, tensors, prompts)
    return {**tensors, "prompts": prompts}


def reward_data(pipe, cfg: ScorerTrainConfig, path: Path, *, log=print) -> dict:
    """ReNO's iterates on train prompts with `cfg.init_from` as the reward, labelled by the exact checker; cached
    atomically at `path`."""
    if path.exists():
        return load_prompted_tensors(path)
    from ..generation import generate, to_pil
    from ..methods.noise_optimization import NoiseOptimization, Reward, recommended_steps
    from ..world.dataset import sample_prompts

    scorer = load_scorer(cfg.init_from, vae=pipe.vae).requires_grad_(False)
    steps = recommended_steps(pipe)
    rng = random.Random(cfg.seed + 19)
    runs = sample_prompts(cfg.reward_samples, rng, split=cfg.split, weights=list(cfg.category_weights))
    finals, iterations, prompts = [], [], []
    for i, prompt in enumerate(tqdm(runs, desc="reward samples")):
        seed = 20_000_000 + cfg.seed * cfg.reward_samples + i  # never a bench or trajectory seed

        def keep(info: dict) -> None:
            if info["iteration"] > 0:  # iterate 0 is the plain sample
                finals.append(info["latents"].cpu())
                iterations.append(info["iteration"])

        stage = NoiseOptimization(iterations=cfg.reward_iterations, rewards=[Reward(scorer)], on_iterate=keep)
        generate(pipe, prompt, method=stage, seed=seed, num_inference_steps=steps)
        prompts += [prompt] * (len(finals) - len(prompts))
    final = torch.cat(finals)
    with torch.no_grad():
        decoder = Denoiser(pipe)
        images = [im for z in final.split(256) for im in to_pil(decoder.decode(z))]
    aligned = torch.tensor([check(im, p).ok for im, p in zip(images, prompts, strict=True)])
    log(f"reward samples: {len(prompts)} iterates of {len(runs)} runs, {aligned.float().mean():.3f} aligned")
    tensors = {"final": final, "iteration": torch.tensor(iterations), "aligned": aligned}
    save_prompted_tensors(path, tensors, prompts)
    return {**tensors, "prompts": prompts}


def mixed_pairs(prompts: list[str], aligned: torch.Tensor) -> torch.Tensor:
    """Every (accepted, rejected) pair of samples of one prompt, as rows of sample indices."""
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for i, (p, ok) in enumerate(zip(prompts, aligned.tolist(), strict=True)):
        groups.setdefault(p, ([], []))[0 if ok else 1].append(i)
    pairs = [(a, r) for good, bad in groups.values() for a in good for r in bad]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def ranking_loss(own: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: mean logistic loss of each (accepted, rejected) row's own-caption score difference."""
    return F.softplus(own[pairs[:, 1]] - own[pairs[:, 0]]).mean()


def _pool(cfg: ScorerTrainConfig, vae, scaling: float | None):
    """Rendered scenes as the scorer reads them: [0, 1] pixels, or the VAE posterior (mean, std) in latent units."""
    weights = list(cfg.category_weights)
    images, prompts = build_dataset(cfg.pool_size, seed=cfg.seed + 11, split=cfg.split, weights=weights)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    if vae is None:
        return pixels, None, prompts
    means, stds = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(pixels), 500), desc="encode pool"):
            dist = vae.encode(pixels[i : i + 500] * 2 - 1).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds), prompts


def build_scorer_for(cfg: ScorerTrainConfig, pipe) -> tuple[Scorer, tuple | None]:
    """A random-weight Shapes scorer of `cfg.kind` matched to `pipe`'s VAE (and its preview map, for a noisy
    scorer that reads the preview)."""
    scaling = float(pipe.vae.config.scaling_factor)
    if cfg.init_from is not None:
        return _init_scorer(cfg, pipe, scaling)
    preview = None
    if cfg.kind == "noisy" and cfg.noisy_reads == "preview":
        images, _ = build_dataset(512, seed=cfg.seed + 13, split=cfg.split, progress=False)
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            latents = pipe.vae.encode(pixels * 2 - 1).latent_dist.mean
        preview = fit_preview_map(latents, pixels)
    size = dict(vision_width=cfg.vision_width, vision_layers=cfg.vision_layers)
    return build_shapes_scorer(cfg.kind, scaling, preview_map=preview, seed=cfg.seed, **size), preview


def _init_scorer(cfg: ScorerTrainConfig, pipe, scaling: float) -> tuple[Scorer, tuple | None]:
    """The saved scorer `cfg.init_from`, checked against the config and the pipeline, ready to train."""
    scorer = load_scorer(cfg.init_from, vae=pipe.vae if cfg.kind == "pixel" else None)
    if cfg.kind == "noisy" and scorer.kind == "latent":
        # NoisyCLIP as the paper makes it: fine-tune an image tower that already reads clean inputs. A Latent-CLIP
        # has the latent-reading NoisyCLIP's architecture; its timestep embedding starts at zero, so the new
        # scorer starts with the Latent-CLIP's scores at every t.
        if cfg.noisy_reads != "latents":
            raise ValueError(f"init_from {cfg.init_from!r} is a Latent-CLIP: it reads latents, not {cfg.noisy_reads}")
        scorer = NoisyCLIPScorer(scorer.clip, scorer.tokenizer, scorer.vae_scaling_factor)
    if scorer.kind != cfg.kind:
        raise ValueError(f"init_from {cfg.init_from!r} is a {scorer.kind} scorer, not {cfg.kind}")
    if cfg.kind != "pixel" and abs(scorer.vae_scaling_factor - scaling) > 1e-6 * scaling:
        raise ValueError(f"init_from {cfg.init_from!r} was made for another VAE (scaling factor differs)")
    preview = None
    if cfg.kind == "noisy":
        reads = "latents" if scorer.preview_matrix is None else "preview"
        if reads != cfg.noisy_reads:
            raise ValueError(f"init_from {cfg.init_from!r} reads {reads}, not {cfg.noisy_reads}")
        if scorer.preview_matrix is not None:
            preview = (scorer.preview_matrix, scorer.preview_bias)
    return scorer.requires_grad_(True), preview


def train_scorer(out: str | Path, cfg: ScorerTrainConfig, pipe, *, accelerator=None, log=print) -> Path:
    """Train a Shapes scorer for `pipe` into `out/scorer` (resumes from `out/checkpoint`); returns that folder."""
    from accelerate import Accelerator

    acc = accelerator or Accelerator(cpu=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    if acc.num_processes > 1 and cfg.batch % acc.num_processes:
        raise ValueError(f"batch {cfg.batch} does not split over {acc.num_processes} processes")
    main = acc.is_main_process
    pipe.vae.requires_grad_(False)
    scaling = float(pipe.vae.config.scaling_factor)
    scorer, _ = build_scorer_for(cfg, pipe)
    scorer.train()
    opt = torch.optim.AdamW(scorer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = {"step": 0, "seconds": 0.0, "losses": {}, "config": json.loads(json.dumps(asdict(cfg)))}
    if main:
        recover_checkpoint(ckpt)
    acc.wait_for_everyone()
    if checkpoint_exists(ckpt, meta["config"]):
        meta = load_checkpoint(ckpt, {"scorer": scorer}, opt)
        log(f"resuming from {ckpt} at step {meta['step']}")
    t_start = time.time() - meta["seconds"]

    first, second, prompts = _pool(cfg, None if cfg.kind == "pixel" else pipe.vae, scaling)
    allowed = {p for name in SUITE_NAMES for p in suite(name, cfg.split)}
    traj = None
    teacher = None
    if cfg.distill_weight > 0:
        teacher = load_scorer(cfg.teacher, vae=pipe.vae).requires_grad_(False)
        if teacher.kind != "pixel":
            raise ValueError(f"the distillation teacher must be a pixel scorer, got {teacher.kind} ({cfg.teacher})")
    if cfg.trajectory_share > 0:
        if main:
            trajectory_data(pipe, cfg, out / "trajectories.safetensors", log=log)
        acc.wait_for_everyone()
        traj = trajectory_data(pipe, cfg, out / "trajectories.safetensors", log=log)
        if teacher is not None and "x0" not in traj:
            raise ValueError(f"{out / 'trajectories.safetensors'} has no x0 predictions to distil; delete it")
        if cfg.kind != "noisy" and "final" not in traj:
            raise ValueError(f"{out / 'trajectories.safetensors'} has no final latents (an older cache); delete it")
        if cfg.reward_samples:
            if main:
                reward_data(pipe, cfg, out / "reward_samples.safetensors", log=log)
            acc.wait_for_everyone()
            extra = reward_data(pipe, cfg, out / "reward_samples.safetensors", log=log)
            traj["final"] = torch.cat([traj["final"], extra["final"]])
            traj["aligned"] = torch.cat([traj["aligned"], extra["aligned"]])
            traj["prompts"] = traj["prompts"] + extra["prompts"]
        if cfg.kind == "pixel":  # the pixel scorer reads the decoded samples, as it does as a reward
            with torch.no_grad():
                decoder = Denoiser(pipe)
                traj["final"] = torch.cat([decoder.decode(z) for z in traj["final"].split(256)])
    n_traj = round(cfg.trajectory_share * cfg.batch) if traj is not None else 0
    pairs = None
    if cfg.ranking_weight > 0:
        pairs = mixed_pairs(traj["prompts"], traj["aligned"])
        if not len(pairs):
            raise ValueError("ranking_weight: no trajectory prompt has both an accepted and a rejected sample")
        log(f"ranking: {len(pairs)} (accepted, rejected) pairs over {len(set(traj['prompts']))} prompts")
    noise_sched = None
    if cfg.kind == "noisy":
        from diffusers import DDPMScheduler

        noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)

    model = acc.prepare(_Pair(scorer))
    loss_fn = ContrastiveLoss()
    share = cfg.batch // acc.num_processes
    local = slice(acc.process_index * share, (acc.process_index + 1) * share)
    bar = tqdm(
        range(meta["step"], cfg.steps),
        desc=f"train {cfg.kind} scorer",
        initial=meta["step"],
        total=cfg.steps,
        disable=not main,
    )
    for step in bar:
        # The global batch is drawn from (seed, step) alone: every process sees the same draw, keeps its slice.
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        rng = random.Random(cfg.seed * 1_000_003 + step)
        n_render = cfg.batch - n_traj
        idx = torch.randint(0, len(prompts), (n_render,), generator=g)
        captions = [_caption(prompts[i], rng, cfg.inverse_phrasing, allowed) for i in idx.tolist()]
        aligned = torch.ones(cfg.batch, dtype=torch.bool)
        from_traj = torch.zeros(cfg.batch, dtype=torch.bool)
        x0 = None
        t = None
        if cfg.kind == "pixel":
            x = first[idx]
        else:
            x = (first[idx] + second[idx] * torch.randn(first[idx].shape, generator=g)) * scaling
        noisy = cfg.kind == "noisy"
        if noisy:
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (n_render,), generator=g)
            x = noise_sched.add_noise(x, torch.randn(x.shape, generator=g), t)
        if n_traj:
            # samples j (at steps s, for noisy); with ranking, (accepted, rejected) pairs of one prompt (one step)
            n_steps = traj["latents"].shape[1]
            if pairs is not None:
                j = pairs[torch.randint(0, len(pairs), (n_traj // 2,), generator=g)].flatten()
                s = torch.randint(0, n_steps, (n_traj // 2,), generator=g).repeat_interleave(2) if noisy else None
                if n_traj % 2:  # an odd share: one more sample, in no pair
                    j = torch.cat([j, torch.randint(0, len(traj["prompts"]), (1,), generator=g)])
                    s = torch.cat([s, torch.randint(0, n_steps, (1,), generator=g)]) if noisy else None
            else:
                j = torch.randint(0, len(traj["prompts"]), (n_traj,), generator=g)
                s = torch.randint(0, n_steps, (n_traj,), generator=g) if noisy else None
            if noisy:
                z, ts_ = traj["latents"][j, s], traj["timesteps"][s].long()
                if cfg.renoise > 0:
                    fresh = torch.rand(len(j), generator=g) < cfg.renoise
                    final = traj["final"][j] if "final" in traj else traj["x0"][j, -1]
                    renoised = noise_sched.add_noise(final, torch.randn(final.shape, generator=g), ts_)
                    z = torch.where(fresh[:, None, None, None], renoised, z)
                x = torch.cat([x, z])
                t = torch.cat([t, ts_])
            else:
                x = torch.cat([x, traj["final"][j]])
            captions += [traj["prompts"][k] for k in j.tolist()]
            aligned[n_render:] = traj["aligned"][j]
            from_traj[n_render:] = True
            if teacher is not None:
                seen = s if cfg.distill_target == "current" else torch.full_like(s, traj["x0"].shape[1] - 1)
                x0 = torch.cat([torch.zeros((n_render, *x.shape[1:])), traj["x0"][j, seen]])
        order = torch.randperm(cfg.batch, generator=g)  # mix renders and trajectories across processes
        x, aligned, from_traj = x[order], aligned[order], from_traj[order]
        x0 = x0[order] if x0 is not None else None
        t = t[order] if t is not None else None
        captions = [captions[i] for i in order.tolist()]
        negatives = [corrupt(c, rng) for c in captions for _ in range(cfg.hard_negatives)]
        # this process's share: its images, its captions and its images' hard negatives
        x, aligned, from_traj = x[local], aligned[local], from_traj[local]
        x0 = x0[local] if x0 is not None else None
        t = t[local] if t is not None else None
        mine = captions[local]
        negs = negatives[local.start * cfg.hard_negatives : local.stop * cfg.hard_negatives]
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        image, text, scale = model(x, t, mine + negs)
        terms = loss_fn(image, text, mine, aligned, scale, cfg.hard_negatives, cfg.verdict_weight)
        if pairs is not None:
            # where each drawn pair landed after the shuffle; pairs split across processes are left out
            where = torch.empty_like(order)
            where[order] = torch.arange(cfg.batch)
            batch_pairs = where[n_render + torch.arange(n_traj // 2 * 2)].reshape(-1, 2) - local.start
            batch_pairs = batch_pairs[((batch_pairs >= 0) & (batch_pairs < share)).all(dim=1)]
            if len(batch_pairs):
                own = scale * (image * text[: len(image)]).sum(dim=1)
                ranking = ranking_loss(own, batch_pairs)
                terms["loss"] = terms["loss"] + cfg.ranking_weight * ranking
                terms["ranking"] = ranking.detach()
        rows = from_traj.nonzero().flatten()
        if teacher is not None and len(rows):
            with torch.no_grad():
                target = teacher.clip.logit_scale.exp() * teacher.embed_images(teacher.decode(x0[rows]))
                target = torch.zeros(len(x), target.shape[1]).index_copy(0, rows, target)
                target = target @ teacher.embed_text(mine + negs).T
            kl = distillation_kl(scale * image @ text.T, target, rows, cfg.hard_negatives)
            terms["loss"] = terms["loss"] + cfg.distill_weight * kl
        opt.zero_grad(set_to_none=True)
        acc.backward(terms["loss"])
        torch.nn.utils.clip_grad_norm_(scorer.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            scorer.clip.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{terms['loss'].item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            meta.update(step=step + 1, seconds=time.time() - t_start)
            meta["losses"][str(step + 1)] = round(terms["loss"].item(), 4)
            if main:
                save_checkpoint(ckpt, {"scorer": scorer}, opt, meta)
            acc.wait_for_everyone()

    final = out / "scorer"
    if main:
        scorer.eval()
        report = {k: v for k, v in meta.items() if k != "param_groups"}
        report["processes"] = acc.num_processes
        report["seconds"] = round(time.time() - t_start, 1)
        report["zero_shot"] = zero_shot_accuracy(scorer, pipe, split="heldout", per_suite=cfg.eval_per_suite)

        def write(folder: Path) -> None:
            save_scorer(scorer, folder)
            (folder / "training.json").write_text(json.dumps(report, indent=1) + "\n")

        publish_folder(out, "scorer", write)
        log(f"saved {final} after {report['seconds'] / 60:.1f} min; zero-shot {report['zero_shot']}")
    acc.wait_for_everyone()
    return final


@torch.no_grad()
def zero_shot_accuracy(
    scorer: Scorer, pipe, *, split: str = "heldout", per_suite: int = 200, labels: int = 6, seed: int = 123
) -> dict[str, float]:
    """Zero-shot classification of renders of `split` prompts: the true prompt against `labels - 1` corruptions
    (one colour, shape, relation or count changed); per suite, the share where the true prompt wins. Latent and
    noisy scorers read the VAE latents of the render (noisy at the smallest timestep of the default schedule)."""
    rng = random.Random(seed)
    result = {}
    scaling = float(pipe.vae.config.scaling_factor)
    for name in SUITE_NAMES:
        prompts = [rng.choice(suite(name, split)) for _ in range(per_suite)]
        from ..world.render import render, to_array

        pixels = (
            torch.from_numpy(np.stack([to_array(render(p, rng.randrange(2**31))) for p in prompts]))
            .permute(0, 3, 1, 2)
            .float()
            / 255
        )
        if scorer.space == "pixels":
            x, t = pixels, None
        else:
            x, t = pipe.vae.encode(pixels * 2 - 1).latent_dist.mean * scaling, None
            if scorer.space == "noisy_latents":
                t = torch.zeros(len(prompts), dtype=torch.long)
        correct = 0
        for i, p in enumerate(prompts):
            options = [p]
            while len(options) < labels:
                c = corrupt(p, rng)
                if c not in options:
                    options.append(c)
            ti = None if t is None else t[i : i + 1]
            correct += int(scorer.classify(x[i : i + 1], options, ti).argmax() == 0)
        result[name] = round(correct / len(prompts), 4)
    return result
