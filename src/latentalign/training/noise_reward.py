"""Training a noise reward model R(noise, prompt) -> per-word log-odds (arXiv 2510.14526's reward model).

1. data: `prompts` TRAIN prompts x `seeds_per_prompt` seeds (from 40_000_000 on: never a bench, scorer, judge or
   projector seed); for each, the preview of its noise (`NoiseRewardModel.preview`) and the token judge's feedback on
   the image plain generation makes from the same seed (the Shapes checker's word verdicts by default). Chunks of
   `chunk_prompts` prompts are written atomically, so an interrupted run resumes at the next chunk.
2. R starts from a trained judge (`start`, the shipped shapes-judge by default: its towers and joint layers), gets a
   new word head, and learns binary cross-entropy on every scored word and on the image verdict; the pre-trained
   parts at `start_lr_scale` x lr. `validation_share` of the prompts is kept aside for the run's own report.
3. OUT/noise_reward: what `NoiseRewardModel.save` writes, with the training record and its fidelity on the kept-aside
   TRAIN prompts: per-word AUROC and Pearson correlation of R's probabilities with the verdicts (the paper's check),
   and the within-prompt AUROC of its image log-odds.
Held-out prompts are never touched here (`fidelity` in this module reports on any recorded set, for a benchmark).
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
from ..scorers.noise_reward import NoiseRewardModel
from ..scorers.token_judges import ShapesTokenJudge, TokenJudge
from .judge import within_prompt_auroc
from .world import warmup_cosine_lr

DATA_SEED_BASE = 40_000_000
MAX_WORDS = 16  # word slots recorded per prompt (Shapes prompts have at most 8 words)


@dataclass(frozen=True)
class NoiseRewardTrainConfig:
    start: str = "shapes-judge"  # the judge R starts from: a shipped name or a judge folder
    start_lr_scale: float = 0.3
    preview_steps: int | None = (
        None  # None: the pipeline's noise-optimisation steps (1 on shapes-one-step, 4 on shapes)
    )
    prompts: int = 768  # TRAIN prompts recorded
    seeds_per_prompt: int = 8
    chunk_prompts: int = 16
    validation_share: float = 0.1
    steps: int = 600
    batch: int = 128
    lr: float = 3e-4
    warmup: int = 50
    word_weight: float = 1.0
    image_weight: float = 1.0
    checkpoint_every: int = 100
    category_weights: tuple[float, ...] = (0.05, 0.35, 0.35, 0.25)  # single_object, two_objects, relation, counting
    seed: int = 0

    def __post_init__(self):
        for name in ("prompts", "seeds_per_prompt", "chunk_prompts", "steps", "batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.preview_steps is not None and self.preview_steps < 1:
            raise ValueError(f"preview_steps must be >= 1, got {self.preview_steps}")
        if not 0 < self.validation_share < 0.5:
            raise ValueError(f"validation_share must be in (0, 0.5), got {self.validation_share}")
        for name in ("lr", "start_lr_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("word_weight", "image_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if len(self.category_weights) != 4 or min(self.category_weights) < 0 or sum(self.category_weights) <= 0:
            raise ValueError("category_weights must be 4 non-negative shares, not all zero")
        if self.warmup < 0 or self.seed < 0:
            raise ValueError("warmup and seed must be >= 0")


def feedback_labels(feedback, n_words: int = MAX_WORDS) -> tuple[torch.Tensor, torch.Tensor]:
    """Token judge feedback as tensors: word scores (batch, n_words; -1 where a word is not scored) and image
    scores (batch,)."""
    words = torch.full((len(feedback), n_words), -1.0)
    for row, scores in enumerate(feedback):
        for index, value in scores.words.items():
            if index >= n_words:
                raise ValueError(f"a prompt with more than {n_words} words")
            if not 0 <= value <= 1:
                raise ValueError(f"token judge scores must be in [0, 1], got {value}")
            words[row, index] = float(value)
    image = torch.tensor([float(s.image) for s in feedback])
    if not bool(((image >= 0) & (image <= 1)).all()):
        raise ValueError("token judge image scores must be in [0, 1]")
    return words, image


@torch.no_grad()
def record_feedback(
    pipe, reward: NoiseRewardModel, prompts: list[str], seeds_per_prompt: int, folder: Path, *, seed_base: int,
    chunk_prompts: int = 16, token_judge: TokenJudge | None = None, desc: str = "noise reward data",
) -> dict:  # fmt: skip
    """For every prompt x seed: the noise's preview and the token judge's feedback on plain generation's image from
    that seed; chunked and resumable in `folder`. Returns every chunk concatenated."""
    from ..core import to_pil
    from ..generation import generate, sampling_defaults

    token_judge = token_judge or ShapesTokenJudge()
    long = next((p for p in prompts if len(p.replace(",", " ").split()) > MAX_WORDS), None)
    if long is not None:
        raise ValueError(f"prompts of at most {MAX_WORDS} words, got {long!r}")
    folder.mkdir(parents=True, exist_ok=True)
    den = Denoiser(pipe)
    steps = sampling_defaults(pipe).num_inference_steps
    chunks = [prompts[i : i + chunk_prompts] for i in range(0, len(prompts), chunk_prompts)]
    for i in tqdm(range(len(chunks)), desc=desc):
        path = folder / f"chunk{i:05d}.safetensors"
        rows = [p for p in chunks[i] for _ in range(seeds_per_prompt)]
        first = seed_base + i * chunk_prompts * seeds_per_prompt
        seeds = list(range(first, first + len(rows)))
        if path.exists():
            saved = load_prompted_tensors(path)
            if saved["prompts"] != rows or saved["seeds"].tolist() != seeds:
                raise ValueError(f"{path} holds other prompts or seeds than this run's: use another folder")
            continue
        cond = den.encode(rows, reward.guidance_scale)
        preview = reward.preview(den, den.initial_noise(seeds), cond, seeds).float()
        if reward.preview_steps == steps and reward.guidance_scale == sampling_defaults(pipe).guidance_scale:
            images = to_pil(den.decode(preview.to(den.dtype)))  # the preview is the generation itself
        else:
            images = generate(pipe, rows, seed=seeds).images
        words, image = feedback_labels(token_judge(images, rows))
        tensors = {"preview": preview, "words": words, "image": image, "seeds": torch.tensor(seeds)}
        save_prompted_tensors(path, tensors, rows)
    parts = [load_prompted_tensors(folder / f"chunk{i:05d}.safetensors") for i in range(len(chunks))]
    out = {k: torch.cat([p[k] for p in parts]) for k in ("preview", "words", "image", "seeds")}
    out["prompts"] = [q for p in parts for q in p["prompts"]]
    return out


def reward_loss(word_logits, image_logits, words, image, word_weight: float, image_weight: float) -> torch.Tensor:
    """Binary cross-entropy on every scored word (soft targets allowed) and on the image score."""
    scored = words >= 0
    word_term = F.binary_cross_entropy_with_logits(word_logits[scored], words[scored]) if scored.any() else 0.0
    return word_weight * word_term + image_weight * F.binary_cross_entropy_with_logits(image_logits, image)


@torch.no_grad()
def fidelity(reward: NoiseRewardModel, data: dict, rows: list[int] | None = None, batch: int = 256) -> dict:
    """How well R's predictions on recorded previews match the token judge's feedback: per-word AUROC and Pearson
    correlation of R's probabilities with the word scores (all words, and by role on Shapes), and the within-prompt
    AUROC of the image log-odds."""
    from ..bench import auroc

    rows = list(range(len(data["prompts"]))) if rows is None else rows
    word_p, image_s = [], []
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        w, img = reward.judge.word_logits(data["preview"][part], [data["prompts"][j] for j in part])
        w = F.pad(w, (0, data["words"].shape[1] - w.shape[1]))  # batches pad to their own longest prompt
        word_p.append(torch.sigmoid(w).cpu())
        image_s.append(img.cpu())
    probs = torch.cat(word_p)
    n = probs.shape[1]
    labels = data["words"][rows, :n]
    scored = labels >= 0
    p, y = probs[scored].numpy(), labels[scored].numpy()
    report = {
        "rows": len(rows),
        "scored_words": int(scored.sum()),
        "word_honoured_share": round(float((y >= 0.5).mean()), 4),
        "word_auroc": round(auroc(p, y >= 0.5), 4) if 0 < (y >= 0.5).sum() < len(y) else None,
        "word_pearson": round(float(np.corrcoef(p, y)[0, 1]), 4) if y.std() > 0 and p.std() > 0 else None,
        "image_within_prompt_auroc": within_prompt_auroc(
            torch.cat(image_s).tolist(), data["image"][rows].tolist(), [data["prompts"][j] for j in rows]
        ),
    }
    roles = word_roles([data["prompts"][j] for j in rows], n)
    if roles is not None:
        by_role = {}
        for role in ("count", "colour", "shape", "relation"):
            mask = scored & (roles == ("count", "colour", "shape", "relation").index(role))
            pr, yr = probs[mask].numpy(), labels[mask].numpy() >= 0.5
            if 0 < yr.sum() < len(yr):
                by_role[role] = {"words": int(mask.sum()), "auroc": round(auroc(pr, yr), 4)}
        report["word_auroc_by_role"] = by_role
    return report


def word_roles(prompts: list[str], n: int) -> torch.Tensor | None:
    """Shapes prompts: each word's role as an index into (count, colour, shape, relation), -1 elsewhere; None when a
    prompt is not a Shapes prompt."""
    from ..scorers.token_judges import shapes_word_roles

    names = ("count", "colour", "shape", "relation")
    roles = torch.full((len(prompts), n), -1)
    for row, prompt in enumerate(prompts):
        judged = shapes_word_roles(prompt)
        if judged is None:
            return None
        for index, role in judged.items():
            if index < n:
                roles[row, index] = names.index(role)
    return roles


def train_prompts(cfg: NoiseRewardTrainConfig) -> list[str]:
    from ..world.dataset import sample_prompts

    return sample_prompts(cfg.prompts, random.Random(cfg.seed + 40), split="train", weights=list(cfg.category_weights))


def new_reward(pipe, cfg: NoiseRewardTrainConfig) -> NoiseRewardModel:
    """R before training: a copy of the `start` judge with a new word head, and the preview's settings."""
    import copy

    from ..embedded import model_id
    from ..generation import sampling_defaults
    from ..methods.noise_optimization import recommended_steps
    from ..scorers import load_scorer
    from ..scorers.judge import LatentJudge

    judge = load_scorer(cfg.start)
    if not isinstance(judge, LatentJudge):
        raise ValueError(f"start must be a latent judge (a shipped name or a judge folder), got a {judge.kind} scorer")
    torch.manual_seed(cfg.seed)
    judge = copy.deepcopy(judge).requires_grad_(True).add_word_head()
    if judge.towers is not None:
        judge.towers.logit_scale.requires_grad_(False)
    else:
        judge.text_encoder.requires_grad_(False)  # the pipeline's text encoder stays as the pipeline reads prompts
    preview = cfg.preview_steps or recommended_steps(pipe)
    return NoiseRewardModel(judge, preview, sampling_defaults(pipe).guidance_scale, model_id(pipe))


def train_noise_reward(out: str | Path, cfg: NoiseRewardTrainConfig, pipe, *, log=print) -> Path:
    """Record TRAIN-prompt feedback into `out/data`, train R (resuming `out/checkpoint`), write `out/noise_reward`."""
    from ..generation import sampling_defaults

    if sampling_defaults(pipe).world != "shapes":
        raise ValueError("train noise-reward draws its prompts from the Shapes world's train split")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    recover_checkpoint(ckpt)
    reward = new_reward(pipe, cfg)
    run = {"pipeline": reward.pipeline, "preview_steps": reward.preview_steps, "guidance_scale": reward.guidance_scale}
    config = json.loads(json.dumps({**asdict(cfg), **run}))
    checkpoint_exists(ckpt, config)  # refuse a mismatched resume before any work
    probe = torch.zeros(1, *Denoiser(pipe).latent_shape, device=reward.judge.device)
    reward.judge.word_logits(probe, ["a red circle"])  # a judge that cannot read this pipeline fails now
    for module in (pipe.unet if hasattr(pipe, "unet") else pipe.transformer, pipe.vae):
        module.requires_grad_(False)
    prompts = train_prompts(cfg)
    data = record_feedback(
        pipe, reward, prompts, cfg.seeds_per_prompt, out / "data", seed_base=DATA_SEED_BASE + cfg.seed * 1_000_000,
        chunk_prompts=cfg.chunk_prompts,
    )  # fmt: skip
    distinct = sorted(set(prompts))
    kept = set(random.Random(cfg.seed + 41).sample(distinct, max(1, round(cfg.validation_share * len(distinct)))))
    train_rows = [i for i, p in enumerate(data["prompts"]) if p not in kept]
    val_rows = [i for i, p in enumerate(data["prompts"]) if p in kept]

    judge = reward.judge.train()
    new = [p for p in judge.word_head.parameters()]
    new_ids = {id(p) for p in new}
    old = [p for p in judge.parameters() if p.requires_grad and id(p) not in new_ids]
    opt = torch.optim.AdamW(
        [{"params": new, "scale": 1.0}, {"params": old, "scale": cfg.start_lr_scale}], lr=cfg.lr, weight_decay=0.01
    )
    meta = {"step": 0, "seconds": 0.0, "log": {}, "config": config}
    if (ckpt / "meta.json").exists():
        meta = load_checkpoint(ckpt, {"judge": judge}, opt)
        log(f"resuming from {ckpt}: step {meta['step']}")
    start = time.time() - meta["seconds"]
    bar = tqdm(range(meta["step"], cfg.steps), desc="train noise reward", initial=meta["step"], total=cfg.steps)
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        pick = [train_rows[i] for i in torch.randint(0, len(train_rows), (cfg.batch,), generator=g).tolist()]
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup) * group["scale"]
        words, image = judge.word_logits(data["preview"][pick], [data["prompts"][i] for i in pick])
        targets = data["words"][pick, : words.shape[1]]
        loss = reward_loss(words, image, targets, data["image"][pick], cfg.word_weight, cfg.image_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g_ in opt.param_groups for p in g_["params"]], 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            meta.update(step=step + 1, seconds=time.time() - start)
            meta["log"][str(step + 1)] = {"loss": round(loss.item(), 5)}
            save_checkpoint(ckpt, {"judge": judge}, opt, meta)

    reward.eval()
    validation = fidelity(reward, data, val_rows)
    record = {k: v for k, v in meta.items() if k != "param_groups"}
    record.update(validation=validation, train_rows=len(train_rows), validation_rows=len(val_rows))
    log(f"kept-aside TRAIN prompts: {json.dumps(validation)}")
    folder = publish_folder(out, "noise_reward", lambda tmp: reward.save(tmp, extra={"training": record}))
    log(f"saved {folder} after {meta['seconds'] / 60:.1f} min of training")
    return folder
