"""Record denoising trajectories (z_t and the x0 prediction at every step) on the shared loop."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .adapters import Denoiser
from .core import resolve, to_pil
from .cost import Cost
from .sampling import sample


@dataclass
class Trajectories:
    """`latents[n, s]` is z_t fed to step s, `x0[n, s]` the denoiser's x0 prediction there (both scaled, as the
    pipeline produces them); `final` the last latents, `images` their decodes, `timesteps[s]` the step's t."""

    prompts: list[str]
    seeds: list[int]
    timesteps: torch.Tensor
    latents: torch.Tensor
    x0: torch.Tensor
    final: torch.Tensor
    images: list
    cost: Cost


@torch.no_grad()
def record_trajectories(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch: int = 64,
    progress: bool = True,
    compact_text: bool = False,
) -> Trajectories:
    """Plain generation of (prompt, seed) pairs, keeping every step's z_t and x0 prediction (same images as
    `generate`). `compact_text` reads the text through `Denoiser.compact_repeated_text` (SD3 without T5: 5x
    cheaper a step, the same trajectories up to float rounding, no longer bit for bit: for training data)."""
    prompts, seeds, steps, scale = resolve(pipe, prompts, seeds, num_inference_steps, guidance_scale)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cost = Cost()
    zs, x0s, finals, images = [], [], [], []
    with cost.timed():
        den = Denoiser(pipe, cost)
        timesteps = den.new_scheduler(steps).timesteps.cpu()
        for i in tqdm(range(0, len(prompts), batch), desc="trajectories", disable=not progress):
            z_steps, x0_steps = [], []

            def keep(info: dict, z_steps=z_steps, x0_steps=x0_steps) -> None:
                z_steps.append(info["latents"].cpu())
                x0_steps.append(info["x0"].cpu())

            cond = den.encode(prompts[i : i + batch], scale)
            start, schedulers = den.start(seeds[i : i + batch], steps)
            with den.compact_repeated_text(cond) if compact_text else nullcontext(cond) as read:
                final = sample(den, start, read, schedulers, callback=keep)
            zs.append(torch.stack(z_steps, 1))
            x0s.append(torch.stack(x0_steps, 1))
            finals.append(final.cpu())
            images += to_pil(den.decode(final))
    return Trajectories(prompts, seeds, timesteps, torch.cat(zs), torch.cat(x0s), torch.cat(finals), images, cost)
