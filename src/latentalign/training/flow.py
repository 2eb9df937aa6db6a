"""Rectified flow (Liu et al., 2022; Esser et al., 2024, SD3): the Shapes world's flow-matching pipeline.

An `SD3Transformer2DModel` and two CLIP text encoders with projection, trained from scratch on rendered
train-split scenes, over the shipped Shapes VAE's latents (the VAE is shared with "shapes", frozen; only its
config gains SD3's `shift_factor` and a `scaling_factor` for the shifted latents, both measured on the pool):
- x_t = (1 - s) x0 + s e, the transformer predicts the velocity e - x0 at timestep 1000 s (SD3's convention,
  which `FlowMatchEulerDiscreteScheduler` integrates); s is drawn logit-normal (SD3's default sampling, m=0, s=1)
  for half of each batch and uniformly from [0.5, 1) for the other half (layout is decided at high noise);
- captions dropped to "" at `cond_dropout` for classifier-free guidance, an EMA of the weights shipped;
- the text the transformer reads is exactly what the stock `StableDiffusion3Pipeline` builds without T5: both
  CLIPs' penultimate states side by side, then `max_sequence_length` (256) zero tokens in T5's place. Those
  zeros are identical tokens, so they stay identical through every block, and attention over n copies equals
  attention over one with log(n) added to its logit: training keeps one copy and that bias
  (`adapters.RepeatedLastToken`, which `Denoiser.compact_repeated_text` also applies where a projector is trained
  through the sampler), 5x cheaper than feeding 256 (tests/test_flow.py checks it against the stock pipeline's own
  embeddings).
Resumable from atomic checkpoints; held-out prompts are never touched.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from ..adapters import repeat_last_text_token
from ..checkpoint import checkpoint_exists, load_checkpoint, recover_checkpoint, save_checkpoint
from ..embedded import SHAPES
from ..world.dataset import PAIR_ORDERS, build_dataset
from .world import (
    _captions,
    _config_json,
    _encode_pool,
    _gen,
    _to_tensor,
    clipped_ema_step,
    save_pipeline_folder,
    warmup_cosine_lr,
)

T5_ZERO_TOKENS = 256  # the stock SD3 pipeline's default max_sequence_length: its zero T5 block has this many rows


@dataclass(frozen=True)
class FlowTrainConfig:
    steps: int = 5000  # ~46 min on 2 cores with the pool's rendering (0.5 s a step)
    batch: int = 64
    lr: float = 3e-4
    warmup: int = 200
    cond_dropout: float = 0.1  # empty prompt this often, for classifier-free guidance
    ema_decay: float = 0.999
    logit_mean: float = 0.0  # SD3's logit-normal timestep sampling
    logit_std: float = 1.0
    # layout is decided at the highest noise, where logit-normal at m = 0 draws little (s > 0.8: 8.3%); as the
    # "shapes" UNet's recipe, this share of each batch draws s uniformly from [high_noise_start, 1) instead
    high_noise_share: float = 0.5
    high_noise_start: float = 0.5
    pool_size: int = 40000  # rendered train scenes, as for "shapes"
    split: str = "train"
    category_weights: tuple[float, ...] = (0.1, 0.25, 0.4, 0.25)  # as "shapes": relations are learnt slowest
    inverse_phrasing: float = 0.5  # caption a relation scene from its other object this often
    # "left-to-right": a two-object scene's caption names its left group first (world.dataset.build_dataset)
    pair_order: str = "prompt"
    checkpoint_every: int = 250
    seed: int = 1

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1 or self.pool_size < 1:
            raise ValueError(
                f"steps, batch and pool_size must be >= 1, got {self.steps}, {self.batch}, {self.pool_size}"
            )
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must lie in [0, 1), got {self.cond_dropout}")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {self.logit_std}")
        if not 0.0 <= self.high_noise_share <= 1.0:
            raise ValueError(f"high_noise_share must lie in [0, 1], got {self.high_noise_share}")
        if not 0.0 <= self.high_noise_start < 1.0:
            raise ValueError(f"high_noise_start must lie in [0, 1), got {self.high_noise_start}")
        weights = self.category_weights
        if len(weights) != 4 or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                "category_weights must be 4 non-negative shares (single object, two objects, relation, counting),"
                f" not all zero; got {self.category_weights}"
            )
        if self.pair_order not in PAIR_ORDERS:
            raise ValueError(f"pair_order must be one of {PAIR_ORDERS}, got {self.pair_order!r}")


def text_states(text_encoders, ids: torch.Tensor, joint_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What `StableDiffusion3Pipeline.encode_prompt` builds from the CLIPs (before T5's block): penultimate
    hidden states side by side, zero-padded to `joint_dim`, plus one zero token for the T5 block; pooled
    projections side by side."""
    outs = [te(ids, output_hidden_states=True) for te in text_encoders]
    seq = torch.cat([o.hidden_states[-2] for o in outs], -1)
    seq = F.pad(seq, (0, joint_dim - seq.shape[-1]))
    seq = torch.cat([seq, seq.new_zeros(seq.shape[0], 1, joint_dim)], 1)
    return seq, torch.cat([o.text_embeds for o in outs], -1)


def compressed_t5(transformer, repeats: int = T5_ZERO_TOKENS):
    """Install `RepeatedLastToken` on every joint attention of `transformer`; returns the processors to restore."""
    return repeat_last_text_token(transformer, repeats)


def flow_matching_loss(transformer, text_encoders, z0, ids, noise, sigma) -> dict[str, torch.Tensor]:
    """Rectified flow's velocity regression at noise levels `sigma` (the transformer under `compressed_t5`)."""
    s = sigma.view(-1, 1, 1, 1)
    zt = (1 - s) * z0 + s * noise
    seq, pooled = text_states(text_encoders, ids, transformer.config.joint_attention_dim)
    pred = transformer(zt, encoder_hidden_states=seq, pooled_projections=pooled, timestep=sigma * 1000).sample
    return {"flow": F.mse_loss(pred, noise - z0)}


def flow_sigmas(cfg: FlowTrainConfig, n: int, g: torch.Generator) -> torch.Tensor:
    """SD3's logit-normal noise levels, except a `high_noise_share` drawn uniformly from [high_noise_start, 1)."""
    sigma = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=g))
    high = cfg.high_noise_start + (1.0 - cfg.high_noise_start) * torch.rand(n, generator=g)
    return torch.where(torch.rand(n, generator=g) < cfg.high_noise_share, high, sigma)


def shapes_vae() -> AutoencoderKL:
    """The shipped Shapes VAE, frozen."""
    from ..pipeline import SHAPES_WEIGHTS

    if not (SHAPES_WEIGHTS / "vae").exists():
        raise FileNotFoundError(
            f"the Shapes VAE is missing from {SHAPES_WEIGHTS}; run `latentalign train world --ship`"
        )
    return AutoencoderKL.from_pretrained(SHAPES_WEIGHTS / "vae", use_safetensors=True).eval().requires_grad_(False)


def train_flow(out: str | Path, cfg: FlowTrainConfig = FlowTrainConfig(), *, log=print) -> Path:
    """Train and save the flow-matching Shapes pipeline to `out/pipeline`; resumes from `out/checkpoint`."""
    from ..pipeline import assemble_flow, build_shapes_flow_components

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    t_start = time.time()
    vae = shapes_vae()
    comps = build_shapes_flow_components(cfg.seed, vae)
    ema = build_shapes_flow_components(cfg.seed, vae)
    trained = ["transformer", "text_encoder", "text_encoder_2"]
    modules = {**{n: comps[n] for n in trained}, **{f"ema_{n}": ema[n] for n in trained}}
    params = [p for n in trained for p in comps[n].parameters()]
    ema_pairs = [(e, p) for n in trained for e, p in zip(ema[n].parameters(), comps[n].parameters(), strict=True)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    meta = {"step": 0, "seconds": 0.0, "losses": {}}
    recover_checkpoint(ckpt)
    if checkpoint_exists(ckpt, _config_json(cfg)):
        meta = load_checkpoint(ckpt, modules, opt)
        log(f"resuming from {ckpt} at step {meta['step']}")
    else:
        for n in trained:
            ema[n].load_state_dict(comps[n].state_dict())
    t_start -= meta["seconds"]

    images, prompts = build_dataset(
        cfg.pool_size, seed=cfg.seed, split=cfg.split, weights=list(cfg.category_weights), pair_order=cfg.pair_order
    )
    captions = _captions(prompts, cfg)
    lat_mean, lat_std = _encode_pool(vae, _to_tensor(images))
    shift = float(lat_mean.mean())
    scaling = float(1.0 / (lat_mean - shift).std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scaling)
    log(f"VAE shift {shift:.4f}, scaling {scaling:.4f} (measured on the pool's posterior means)")

    tok = comps["tokenizer"]
    ids_all = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    ids_all = ids_all.input_ids
    ids_empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids[0]
    transformer = comps["transformer"]
    text_encoders = [comps["text_encoder"], comps["text_encoder_2"]]
    compressed_t5(transformer)
    for n in trained:
        comps[n].train()
    bar = tqdm(range(meta["step"], cfg.steps), desc="train flow", initial=meta["step"], total=cfg.steps)
    for step in bar:
        g = _gen(cfg.seed + 1, step)
        idx = torch.randint(0, len(lat_mean), (cfg.batch,), generator=g)
        z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g) - shift) * scaling
        noise = torch.randn(z0.shape, generator=g)
        sigma = flow_sigmas(cfg, cfg.batch, g)
        ids = ids_all[idx].clone()
        ids[torch.rand(cfg.batch, generator=g) < cfg.cond_dropout] = ids_empty
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        loss = flow_matching_loss(transformer, text_encoders, z0, ids, noise, sigma)["flow"]
        clipped_ema_step(opt, loss, params, ema_pairs, step, cfg.ema_decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            meta.update(step=step + 1, seconds=time.time() - t_start, config=_config_json(cfg))
            meta["losses"][str(step + 1)] = loss.item()
            save_checkpoint(ckpt, modules, opt, meta)

    load_checkpoint(ckpt, {f"ema_{n}": ema[n] for n in trained}, None)
    pipe = assemble_flow({**comps, **{n: ema[n].eval() for n in trained}})
    meta.update(seconds=time.time() - t_start, vae_shift_factor=shift, vae_scaling_factor=scaling)
    return save_pipeline_folder(pipe, out, meta, write_flow_defaults, log=log)


# chosen on TRAIN prompts (benchmarks/results/flow_sweep_run2, the shipped second run: steps 10/20 x shift 1/3 x
# guidance 1.5/3/5, 96 images each): the highest overall accuracy, 0.521, is a tie of 10 and 20 steps at shift 3,
# guidance 3; ties go to the fewest steps (the first run's sweep, benchmarks/results/flow_sweep, chose the same)
SHAPES_FLOW_STEPS = 10
SHAPES_FLOW_GUIDANCE = 3.0
SHAPES_FLOW_SHIFT = 3.0
# Best-of-N's and early exit's scorer on shapes-flow, chosen on TRAIN prompts (128 images a row, N = 4). First
# (benchmarks/configs/flow_judge_choice_train.toml): Best-of-4 with pixel CLIP on the decode 0.555, the shapes latent
# judge zero-shot 0.539, plain 0.492; early exit with NoisyCLIP or that judge 0.500. Then shapes-flow's own judge
# (shapes-flow-judge, `latentalign train judge --model shapes-flow`; flow_own_judge_choice_train.toml): Best-of-4
# 0.562 against pixel CLIP's 0.555 there, within 0.01 at the same 80 evaluations, so the cheaper call decides (the
# judge: about 0.2 of decode + pixel CLIP, benchmarks/results/scorer_cost); early exit 0.531 on z_t, 0.523 on the x0
# prediction, the zero-shot judge 0.500 (52 evaluations each). The own judge read the shipped weights' trajectories:
# a newly trained flow model keeps pixel CLIP for Best-of-N (and the Shapes default for early exit)
SHAPES_FLOW_BEST_OF_N = {"scorer": "shapes-pixel"}
SHAPES_FLOW_OWN_BEST_OF_N = {"scorer": "shapes-flow-judge"}
SHAPES_FLOW_OWN_EARLY_EXIT = {"scorer": "shapes-flow-judge"}
# noise projection's projector: the reward recipe trained through the shipped shapes-flow itself (`latentalign train
# projector --model shapes-flow`, 1500 steps, 58.9 min; benchmarks/results/noise_projection_flow). On TRAIN prompts
# (benchmarks/configs/flow_projector_choice_train.toml, 128 images a row) it scored 0.508 against plain's 0.492
# (9 fixed / 7 broken, p = 0.80): no measurable gain, no loss, and the only projector trained for this pipeline.
# Held out, reported once after the choice: 0.407 against 0.463 (2 fixed / 8 broken, p = 0.11). Written only when
# shipping (a newly trained flow model is another generator: its projector needs training again)
SHAPES_FLOW_NOISE_PROJECTION = {"projector": "shapes-projector-flow"}


def write_flow_defaults(folder: str | Path, shipped: bool = False) -> None:
    """The recommended steps and guidance beside model_index.json, the schedule's shift in the scheduler's config;
    `shipped`: the shipped weights' own judge and projector (`SHAPES_FLOW_OWN_*`, `SHAPES_FLOW_NOISE_PROJECTION`),
    trained through those weights, where another flow model reads pixel CLIP and has no projector."""
    from ..generation import DEFAULTS_FILE

    folder = Path(folder)
    settings = {
        "num_inference_steps": SHAPES_FLOW_STEPS,
        "guidance_scale": SHAPES_FLOW_GUIDANCE,
        "world": SHAPES,
        "best-of-n": SHAPES_FLOW_BEST_OF_N,
    }
    if shipped:
        settings |= {
            "best-of-n": SHAPES_FLOW_OWN_BEST_OF_N,
            "early-exit": SHAPES_FLOW_OWN_EARLY_EXIT,
            "noise-projection": SHAPES_FLOW_NOISE_PROJECTION,
        }
    (folder / DEFAULTS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.exists():
        config = json.loads(scheduler.read_text())
        scheduler.write_text(json.dumps({**config, "shift": SHAPES_FLOW_SHIFT}, indent=2) + "\n")


def ship_flow(folder: str | Path) -> Path:
    """Copy a trained flow pipeline (`latentalign train flow`) into the package as "shapes-flow", with the
    defaults chosen for it on train prompts."""
    from ..pipeline import SHAPES_FLOW_WEIGHTS

    if SHAPES_FLOW_WEIGHTS.exists():
        shutil.rmtree(SHAPES_FLOW_WEIGHTS)
    shutil.copytree(folder, SHAPES_FLOW_WEIGHTS)
    write_flow_defaults(SHAPES_FLOW_WEIGHTS, shipped=True)
    return SHAPES_FLOW_WEIGHTS
