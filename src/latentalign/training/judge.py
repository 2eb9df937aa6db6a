"""Distil a pixel-space judge into a latent cross-encoder (`LatentJudge`) on the generator's own trajectories.

1. Record plain trajectories of TRAIN prompts, several seeds per prompt (z_t at every step and the final latents), in
   chunks saved atomically one by one, so a killed run resumes where it stopped; under `accelerate launch` each
   process records every P-th chunk.
2. Label each trajectory by the pixel judge on its decoded final image (the Shapes checker, or any callable
   `judge(images, prompts) -> scores in [0, 1]`). On the Shapes world with the checker, rendered scenes of a prompt
   and of its one-word corruptions (captioned with the prompt) add clean within-prompt hard negatives.
3. Train on (prompt, z_t, t) -> label: binary cross-entropy on every item plus a within-prompt Bradley-Terry term on
   pairs of one prompt at one step, one sample the judge accepted and one it rejected (the question Best-of-N asks:
   which of these samples is right, not which prompts are hard). A share of train prompts is kept aside to measure
   the within-prompt AUROC the run reports; the held-out split is never read.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checkpoint import (
    checkpoint_exists,
    load_checkpoint,
    load_prompted_tensors,
    publish_folder,
    recover_checkpoint,
    save_checkpoint,
    save_prompted_tensors,
)
from ..scorers.factory import build_shapes_judge
from ..scorers.judge import LatentJudge, judge_for_pipeline
from .world import warmup_cosine_lr

Judge = Callable[[list, list[str]], object]  # (PIL images, prompts) -> one score in [0, 1] per image


@dataclass(frozen=True)
class JudgeTrainConfig:
    judge: str = "checker"  # "checker" (the Shapes world's exact checker) or "module:function" / "file.py:function"
    # a text file of TRAIN prompts, one per line, for a pipeline outside the Shapes world (None: Shapes train prompts)
    prompt_file: str | None = None
    # a trained Latent-CLIP (shipped name or folder) whose towers the judge starts from, fine-tuned at
    # `tower_lr_scale` x lr; None: the pipeline's frozen text encoder and cells read from scratch
    towers: str | None = "shapes-latent"
    tower_lr_scale: float = 0.3
    prompts: int = 1536  # TRAIN prompts recorded
    # so most prompts have samples the judge accepts and samples it rejects; 16 (the shipped second run) against 8
    # (the first): Best-of-8 on the kept-aside train prompts 0.794 against 0.762 (docs/judges.md)
    seeds_per_prompt: int = 16
    chunk_prompts: int = 8  # prompts per recorded chunk (one atomic file; the unit of resuming and sharding)
    renders: int = 8000  # Shapes + checker only: rendered (prompt, corruption) pairs captioned with the prompt
    render_share: float = 0.5  # share of each batch from the renders (read clean, t = 0)
    final_share: float = 0.25  # share of trajectory items that read the final latents (t = 0), the rest z_t
    pair_share: float = 0.5  # share of trajectory items drawn as (accepted, rejected) pairs of one prompt and step
    ranking_weight: float = 1.0  # weight of the within-prompt Bradley-Terry term beside the cross-entropy
    # weight of the foresight term (judges with a foresight head): mean squared error of the head's picture of the
    # final decoded image, from z_t, against the decode itself; dense targets the judge cannot meet by memorising
    foresight_weight: float = 5.0
    # weight of the object term (judges with an object head, Shapes + checker): cross-entropy of each cell's
    # object-class prediction, from z_t, against the share of its pixels the checker assigns to each object of the
    # final image (the clause-level feedback behind the verdict, as dense targets)
    object_weight: float = 1.0
    validation_share: float = 0.1  # TRAIN prompts kept out of training, for the run's own AUROC report
    steps: int = 3000  # twice the trajectories, half as many again steps (the first run: 2000)
    batch: int = 256  # global batch; each of P processes takes batch / P of it
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 100
    checkpoint_every: int = 250
    # shares of single_object, two_objects, relation, counting in the recorded prompts (Shapes world only)
    category_weights: tuple[float, ...] = (0.05, 0.35, 0.35, 0.25)
    split: str = "train"  # never "heldout"
    seed: int = 0

    def __post_init__(self):
        if self.split == "heldout":
            raise ValueError("judges never train on the held-out split")
        positive = ("prompts", "seeds_per_prompt", "chunk_prompts", "steps", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seeds_per_prompt < 2:
            raise ValueError("seeds_per_prompt must be >= 2: within-prompt pairs need two samples of a prompt")
        if self.batch < 4 or self.renders < 0:
            raise ValueError("batch must be >= 4 and renders >= 0")
        for name in ("render_share", "final_share", "pair_share", "validation_share"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.validation_share >= 0.5:
            raise ValueError(f"validation_share must be below 0.5, got {self.validation_share}")
        if not (math.isfinite(self.ranking_weight) and self.ranking_weight >= 0):
            raise ValueError(f"ranking_weight must be a finite number >= 0, got {self.ranking_weight}")
        for name in ("foresight_weight", "object_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.tower_lr_scale) and self.tower_lr_scale > 0):
            raise ValueError(f"tower_lr_scale must be a finite number > 0, got {self.tower_lr_scale}")
        if self.towers is not None:
            from ..scorers.factory import check_scorer_source

            check_scorer_source(self.towers, "towers")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.prompt_file is not None and not Path(self.prompt_file).is_file():
            raise FileNotFoundError(f"prompt_file {self.prompt_file!r} is not a file")
        if len(self.category_weights) != 4 or min(self.category_weights) < 0 or sum(self.category_weights) <= 0:
            raise ValueError("category_weights must be 4 non-negative shares, not all zero")


def checker_judge(images: list, prompts: list[str]) -> list[float]:
    """The Shapes world's exact checker as a pixel judge: 1.0 when the image satisfies the prompt, else 0.0."""
    from ..world import check

    return [float(check(im, p).ok) for im, p in zip(images, prompts, strict=True)]


def resolve_judge(name: str) -> Judge:
    """ "checker", or a callable named "package.module:function" or "path/to/file.py:function"."""
    if name == "checker":
        return checker_judge
    if ":" not in name:
        raise ValueError(f"judge {name!r}: pass 'checker' or 'module:function' / 'file.py:function'")
    where, attr = name.rsplit(":", 1)
    if where.endswith(".py"):
        if not Path(where).is_file():
            raise FileNotFoundError(f"judge {name!r}: no file {where}")
        spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"judge {name!r}: {where} has no callable {attr!r}")
    return fn


def judge_labels(judge: Judge, images: list, prompts: list[str]) -> torch.Tensor:
    """The judge's scores as a float tensor, refused unless one finite score in [0, 1] per image."""
    raw = judge(images, prompts)
    try:
        scores = torch.as_tensor(np.asarray(raw, dtype=np.float64)).float().flatten()
    except (TypeError, ValueError):
        raise ValueError(f"the judge returned {type(raw).__name__}, not one number per image") from None
    if scores.numel() != len(images) or np.ndim(raw) > 1 and np.shape(raw)[-1] != 1:
        raise ValueError(f"the judge returned {tuple(np.shape(raw))} scores for {len(images)} images: one per image")
    if not bool(torch.isfinite(scores).all()) or scores.min() < 0 or scores.max() > 1:
        raise ValueError("the judge's scores must be finite and in [0, 1] (the probability the image is right)")
    return scores


def probe_judge(judge: Judge, pipe, prompt: str) -> None:
    """Call the judge on two blank images before any work, so a judge of the wrong shape fails in a second."""
    from PIL import Image

    from ..adapters import Denoiser

    h, w = Denoiser(pipe).image_size
    judge_labels(judge, [Image.new("RGB", (w, h), (128, 128, 128))] * 2, [prompt, prompt])


def train_prompts(cfg: JudgeTrainConfig) -> list[str]:
    """The recorded prompts: `cfg.prompts` of `prompt_file`'s lines (all when it has fewer), else sampled from the
    Shapes TRAIN split by category."""
    from ..world.dataset import sample_prompts

    rng = random.Random(cfg.seed + 31)
    if cfg.prompt_file is not None:
        lines = list(dict.fromkeys(x.strip() for x in Path(cfg.prompt_file).read_text().splitlines() if x.strip()))
        if not lines:
            raise ValueError(f"prompt_file {cfg.prompt_file!r} holds no prompts")
        return rng.sample(lines, min(cfg.prompts, len(lines)))
    return sample_prompts(cfg.prompts, rng, split=cfg.split, weights=list(cfg.category_weights))


@torch.no_grad()
def record_chunks(pipe, cfg: JudgeTrainConfig, judge: Judge, folder: Path, prompts: list[str], acc) -> dict:
    """Record and label this process's chunks of trajectories (skipping saved ones), then load every chunk."""
    from ..trajectories import record_trajectories

    folder.mkdir(parents=True, exist_ok=True)
    k, per = cfg.seeds_per_prompt, cfg.chunk_prompts
    chunks = [prompts[i : i + per] for i in range(0, len(prompts), per)]
    mine = [i for i in range(len(chunks)) if i % acc.num_processes == acc.process_index]
    todo = [i for i in mine if not (folder / f"chunk{i:05d}.safetensors").exists()]
    for i in tqdm(todo, desc=f"judge data (rank {acc.process_index})", disable=not todo):
        chunk = [p for p in chunks[i] for _ in range(k)]
        first = 30_000_000 + cfg.seed * 1_000_000 + i * per * k  # never a bench, scorer or reward seed
        seeds = list(range(first, first + len(chunk)))
        traj = record_trajectories(pipe, chunk, seeds, batch=len(chunk), progress=False, compact_text=True)
        labels = judge_labels(judge, traj.images, chunk)  # its decodes of the final latents
        tensors = {"latents": traj.latents, "final": traj.final, "timesteps": traj.timesteps, "labels": labels}
        save_prompted_tensors(folder / f"chunk{i:05d}.safetensors", tensors, chunk)
    acc.wait_for_everyone()
    parts = [load_prompted_tensors(folder / f"chunk{i:05d}.safetensors") for i in range(len(chunks))]
    return {
        "latents": torch.cat([p["latents"] for p in parts]),
        "final": torch.cat([p["final"] for p in parts]),
        "timesteps": parts[0]["timesteps"],
        "labels": torch.cat([p["labels"] for p in parts]),
        "prompts": [q for p in parts for q in p["prompts"]],
    }


@torch.no_grad()
def render_pairs(pipe, cfg: JudgeTrainConfig, path: Path, prompts: list[str]) -> dict:
    """Renders of a prompt and of a one-word corruption of it, both captioned with the prompt, as the pipeline's
    latents (VAE posterior mean), labelled by the checker on their decode; cached atomically at `path`."""
    if path.exists():
        return load_prompted_tensors(path)
    from ..adapters import Denoiser, vae_shift
    from ..core import to_pil
    from ..world import check, corrupt
    from ..world.render import render, to_array

    rng = random.Random(cfg.seed + 37)
    den = Denoiser(pipe)
    scaling, shift = float(pipe.vae.config.scaling_factor), vae_shift(pipe.vae)
    captions, scenes = [], []
    for i in range(cfg.renders):
        prompt = rng.choice(prompts)
        captions += [prompt, prompt]
        scenes += [render(prompt, seed=2 * i), render(corrupt(prompt, rng), seed=2 * i + 1)]
    latents, labels = [], []
    for i in tqdm(range(0, len(scenes), 512), desc="judge renders"):
        pixels = torch.from_numpy(np.stack([to_array(s) for s in scenes[i : i + 512]])).permute(0, 3, 1, 2)
        z = (pipe.vae.encode(pixels.float() / 127.5 - 1).latent_dist.mean - shift) * scaling
        decoded = to_pil(den.decode(z))
        verdicts = [check(im, c).ok for im, c in zip(decoded, captions[i : i + 512], strict=True)]
        labels.append(torch.tensor(verdicts, dtype=torch.float32))
        latents.append(z)
    tensors = {"latents": torch.cat(latents), "labels": torch.cat(labels)}
    save_prompted_tensors(path, tensors, captions)
    return {**tensors, "prompts": captions}


def new_judge(pipe, cfg: JudgeTrainConfig, shapes: bool) -> LatentJudge:
    """The judge `train_judge` starts from: on a trained Latent-CLIP's towers (`cfg.towers`), else on the pipeline's
    text encoder; in the Shapes architecture (configs/shapes_judge*.json) on the Shapes world."""
    from ..embedded import config
    from ..scorers import load_scorer
    from ..scorers.judge import judge_from_latent_clip

    if cfg.towers is None:
        return build_shapes_judge(pipe, seed=cfg.seed) if shapes else judge_for_pipeline(pipe, seed=cfg.seed)
    scorer = load_scorer(cfg.towers).for_pipeline_latents(pipe.vae)
    if abs(scorer.vae_scaling_factor - float(pipe.vae.config.scaling_factor)) > 1e-6:
        raise ValueError(f"towers {cfg.towers!r} read another VAE's latents than this pipeline's")
    return judge_from_latent_clip(scorer, config("shapes_judge_towers") if shapes else None, seed=cfg.seed)


@torch.no_grad()
def decoded(pipe, latents: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The pipeline's decode of `latents` in [0, 1], (N, 3, H, W)."""
    from ..adapters import Denoiser

    den = Denoiser(pipe)
    return torch.cat([den.decode(z).float().cpu() for z in latents.split(batch)])


def object_maps(pictures: torch.Tensor) -> torch.Tensor:
    """The checker's object map of each picture (N, 3, H, W in [0, 1]), (N, H, W) uint8 classes."""
    from ..world.checker import object_map

    maps = [object_map(p.permute(1, 2, 0).numpy()) for p in tqdm(pictures, desc="object maps", leave=False)]
    return torch.from_numpy(np.stack(maps).astype(np.uint8))


def object_loss(logits: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the object head's logits (N, classes, h, w) against the maps (N, H, W): per pixel when the
    head has the maps' resolution, else against the share of each class in every head cell."""
    if tuple(logits.shape[-2:]) == tuple(maps.shape[-2:]):
        return F.cross_entropy(logits, maps.long())
    share = F.adaptive_avg_pool2d(
        F.one_hot(maps.long(), logits.shape[1]).permute(0, 3, 1, 2).float(), logits.shape[-2:]
    )
    return -(share * F.log_softmax(logits, dim=1)).sum(1).mean()


def prompt_pairs(prompts: list[str], labels: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Every (accepted, rejected) pair among `rows` that share a prompt, as rows of indices into all samples."""
    from .scorer import mixed_pairs

    index = torch.tensor(rows, dtype=torch.long)
    return index[mixed_pairs([prompts[i] for i in rows], labels[index] >= 0.5)]


def judge_loss(logits: torch.Tensor, labels: torch.Tensor, paired: int, ranking_weight: float) -> dict:
    """Cross-entropy on every item, and Bradley-Terry on the first `paired` items: consecutive (first, second) pairs
    of one prompt at one timestep, over the pairs whose labels differ, oriented so the better-labelled one should win
    (open_clip-style dict of named terms)."""
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    loss, out = bce, {"bce": bce.detach()}
    if paired and ranking_weight > 0:
        pair_logits, pair_labels = logits[:paired].view(-1, 2), labels[:paired].view(-1, 2)
        differ = pair_labels[:, 0] != pair_labels[:, 1]
        if bool(differ.any()):
            sign = torch.where(pair_labels[:, 0] > pair_labels[:, 1], 1.0, -1.0)
            ranking = F.softplus(-sign * (pair_logits[:, 0] - pair_logits[:, 1]))[differ].mean()
            loss = loss + ranking_weight * ranking
            out["ranking"] = ranking.detach()
    return {"loss": loss, **out}


def within_prompt_auroc(scores: list[float], labels: list[float], prompts: list[str]) -> float | None:
    """Mean over prompts with both kinds of the AUROC of accepted against rejected samples (ties count half)."""
    from ..bench import auroc

    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    scores, accepted = np.asarray(scores, dtype=float), np.asarray(labels, dtype=float) >= 0.5
    values = [auroc(scores[ix], accepted[ix]) for ix in groups.values() if 0 < accepted[ix].sum() < len(ix)]
    return round(float(np.mean(values)), 4) if values else None


@torch.no_grad()
def validation_report(judge: LatentJudge, data: dict, rows: list[int], steps: list[int]) -> dict:
    """Within-prompt AUROC on the kept-aside TRAIN prompts at each of `steps` (an index into z_t, or "final")."""
    report = {}
    prompts = [data["prompts"][i] for i in rows]
    labels = data["labels"][rows].tolist()
    for s in steps:
        if s == "final":
            x, t = data["final"][rows], torch.zeros(len(rows))
        else:
            x, t = data["latents"][rows, s], data["timesteps"][s].float().expand(len(rows))
        scores = torch.cat([judge.score(xb, pb, tb) for xb, pb, tb in _batches(x, prompts, t, 256)]).tolist()
        report[str(s)] = within_prompt_auroc(scores, labels, prompts)
    return report


def _batches(x: torch.Tensor, prompts: list[str], t: torch.Tensor, size: int):
    for i in range(0, len(prompts), size):
        yield x[i : i + size], prompts[i : i + size], t[i : i + size]


def train_judge(out: str | Path, cfg: JudgeTrainConfig, pipe, *, accelerator=None, log=print) -> Path:
    """Train a latent judge for `pipe` into `out/judge` (data in `out/data`, resumes from `out/checkpoint`)."""
    from accelerate import Accelerator

    from ..generation import sampling_defaults
    from ..scorers import save_scorer

    acc = accelerator or Accelerator(cpu=True)
    out = Path(out)
    if cfg.batch % (2 * acc.num_processes):
        raise ValueError(f"batch {cfg.batch} does not split into whole pairs over {acc.num_processes} processes")
    judge_fn = resolve_judge(cfg.judge)
    shapes = sampling_defaults(pipe).world == "shapes"
    if not shapes and (cfg.judge == "checker" or cfg.prompt_file is None):
        raise ValueError("outside the Shapes world pass your own judge ('module:function') and a prompt_file")
    prompts = train_prompts(cfg)
    probe_judge(judge_fn, pipe, prompts[0])
    out.mkdir(parents=True, exist_ok=True)
    main = acc.is_main_process
    ckpt = out / "checkpoint"
    data = record_chunks(pipe, cfg, judge_fn, out / "data", prompts, acc)
    renders = None
    n_render = round(cfg.render_share * cfg.batch) // 2 * 2 if shapes and cfg.judge == "checker" and cfg.renders else 0
    if n_render:
        if main:
            render_pairs(pipe, cfg, out / "data" / "renders.safetensors", prompts)
        acc.wait_for_everyone()
        renders = render_pairs(pipe, cfg, out / "data" / "renders.safetensors", prompts)

    judge = new_judge(pipe, cfg, shapes).train()
    foresight = judge.foresight_head is not None and cfg.foresight_weight > 0
    objects = judge.object_head is not None and cfg.object_weight > 0 and shapes and cfg.judge == "checker"
    for part in [data] + ([renders] if renders is not None else []):
        if foresight or objects:  # the decoded final images (and renders): the dense heads' targets
            pictures = decoded(pipe, part["final"] if part is data else part["latents"])
        if foresight:
            part["images"] = pictures
        if objects:
            part["objects"] = object_maps(pictures)
    dense = foresight or objects

    unique = sorted(set(prompts))
    random.Random(cfg.seed + 41).shuffle(unique)
    aside = set(unique[: round(cfg.validation_share * len(unique))])
    rows = [i for i, p in enumerate(data["prompts"]) if p not in aside]
    held = [i for i, p in enumerate(data["prompts"]) if p in aside]
    pairs = prompt_pairs(data["prompts"], data["labels"], rows)
    if not len(pairs):
        raise ValueError("no recorded prompt has both a sample the judge accepts and one it rejects")
    steps_recorded = data["latents"].shape[1]
    log(
        f"judge data: {len(data['prompts'])} trajectories ({data['labels'].mean():.3f} accepted), {len(pairs)} "
        f"within-prompt pairs; {len(aside)} train prompts kept aside"
    )

    trained = [p for p in judge.parameters() if p.requires_grad]
    towers = [p for n, p in judge.named_parameters() if p.requires_grad and n.startswith("towers.")]
    fresh = [p for n, p in judge.named_parameters() if p.requires_grad and not n.startswith("towers.")]
    groups = [{"params": fresh, "lr_scale": 1.0}] + (
        [{"params": towers, "lr_scale": cfg.tower_lr_scale}] * bool(towers)
    )
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = {"step": 0, "seconds": 0.0, "losses": {}, "validation": {}, "config": json.loads(json.dumps(asdict(cfg)))}
    if main:
        recover_checkpoint(ckpt)
    acc.wait_for_everyone()
    if checkpoint_exists(ckpt, meta["config"]):
        meta = load_checkpoint(ckpt, {"judge": judge}, opt)
        log(f"resuming from {ckpt} at step {meta['step']}")
    t_start = time.time() - meta["seconds"]
    model = acc.prepare(judge)
    share = cfg.batch // acc.num_processes
    local = slice(acc.process_index * share, (acc.process_index + 1) * share)
    n_traj = cfg.batch - n_render
    n_pairs = round(cfg.pair_share * n_traj) // 2
    check_at = [s for s in sorted({round(0.2 * steps_recorded), round(0.4 * steps_recorded)}) if s < steps_recorded]
    bar = tqdm(
        range(meta["step"], cfg.steps), desc="train judge", initial=meta["step"], total=cfg.steps, disable=not main
    )
    for step in bar:
        # the global batch is drawn from (seed, step) alone: every process sees the same draw and keeps its slice
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        pick = pairs[torch.randint(0, len(pairs), (n_pairs,), generator=g)].flatten()
        single = torch.tensor(rows)[torch.randint(0, len(rows), (n_traj - 2 * n_pairs,), generator=g)]
        items = torch.cat([pick, single])
        # one step per pair (both members read the same t), one per single item; steps_recorded means "final"
        reads = torch.randint(0, steps_recorded, (n_pairs + len(single),), generator=g)
        final = torch.rand(len(reads), generator=g) < cfg.final_share
        reads = torch.where(final, torch.full_like(reads, steps_recorded), reads)
        reads = torch.cat([reads[:n_pairs].repeat_interleave(2), reads[n_pairs:]])
        x = torch.where(
            (reads == steps_recorded)[:, None, None, None],
            data["final"][items],
            data["latents"][items, reads.clamp(max=steps_recorded - 1)],
        )
        t = torch.where(reads == steps_recorded, 0.0, data["timesteps"][reads.clamp(max=steps_recorded - 1)].float())
        labels = data["labels"][items]
        images = data["images"][items] if foresight else None
        cell_targets = data["objects"][items] if objects else None
        captions = [data["prompts"][i] for i in items.tolist()]
        if n_render:
            # render pairs come as (prompt, corruption) rows: ranking pairs wherever the checker tells them apart
            r = torch.randint(0, len(renders["labels"]) // 2, (n_render // 2,), generator=g)
            r = torch.stack([2 * r, 2 * r + 1], 1).flatten()
            x = torch.cat([renders["latents"][r], x])
            t = torch.cat([torch.zeros(len(r)), t])
            labels = torch.cat([renders["labels"][r], labels])
            images = torch.cat([renders["images"][r], images]) if foresight else None
            cell_targets = torch.cat([renders["objects"][r], cell_targets]) if objects else None
            captions = [renders["prompts"][i] for i in r.tolist()] + captions
        for group in opt.param_groups:
            group["lr"] = group["lr_scale"] * warmup_cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        # pairs lead the batch and every slice starts at an even index, so each slice holds whole pairs
        paired = min(max(n_render + 2 * n_pairs - local.start, 0), share)
        if dense:
            logits, heads = model(x[local], captions[local], t[local], dense=True)
            terms = judge_loss(logits, labels[local], paired, cfg.ranking_weight)
            if foresight:
                term = F.mse_loss(heads["foresight"], images[local])
                terms["loss"] = terms["loss"] + cfg.foresight_weight * term
                terms["foresight"] = term.detach()
            if objects:
                term = object_loss(heads["objects"], cell_targets[local])
                terms["loss"] = terms["loss"] + cfg.object_weight * term
                terms["objects"] = term.detach()
        else:
            logits = model(x[local], captions[local], t[local])
            terms = judge_loss(logits, labels[local], paired, cfg.ranking_weight)
        opt.zero_grad(set_to_none=True)
        acc.backward(terms["loss"])
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{terms['loss'].item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            meta.update(step=step + 1, seconds=time.time() - t_start)
            meta["losses"][str(step + 1)] = {k: round(v.item(), 4) for k, v in terms.items()}
            if main and held:
                judge.eval()
                meta["validation"][str(step + 1)] = validation_report(judge, data, held, [*check_at, "final"])
                judge.train()
                auroc = meta["validation"][str(step + 1)]
                bar.write(f"step {step + 1}: within-prompt AUROC on kept-aside train prompts {auroc}")
            if main:
                save_checkpoint(ckpt, {"judge": judge}, opt, meta)
            acc.wait_for_everyone()

    final_dir = out / "judge"
    if main:
        judge.eval()
        report = {k: v for k, v in meta.items() if k != "param_groups"}
        report.update(
            processes=acc.num_processes,
            seconds=round(time.time() - t_start, 1),
            trajectories=len(data["prompts"]),
            accepted_share=round(float(data["labels"].mean()), 4),
            within_prompt_pairs=len(pairs),
            train_prompts=sorted(set(data["prompts"]) - aside),
            kept_aside_prompts=sorted(aside),
        )

        def write(folder: Path) -> None:
            save_scorer(judge, folder)
            (folder / "training.json").write_text(json.dumps(report, indent=1) + "\n")

        publish_folder(out, "judge", write)
        log(f"saved {final_dir} after {report['seconds'] / 60:.1f} min")
    acc.wait_for_everyone()
    return final_dir
