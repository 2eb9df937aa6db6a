"""The one denoising loop every method shares (k-diffusion style: the callback sees the x0 prediction)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .adapters import Conditioning, Denoiser

StepCallback = Callable[[dict], None]


def sample(
    denoiser: Denoiser,
    latents: torch.Tensor,
    cond: Conditioning,
    scheduler,
    *,
    start: int = 0,
    stop: int | None = None,
    callback: StepCallback | None = None,
    prepare: Callable[[dict], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run scheduler steps [start, stop) from `latents` (`scheduler`: a scheduler, or the `RowSchedulers` of
    `Denoiser.start`); the callback gets `{"step", "t", "latents", "x0", "model_output"}` after each step's
    denoiser call (before the update). `prepare`, if given, gets `{"step", "t", "latents"}` before each step's
    denoiser call and returns the latents to use (a method's change to z_t, e.g. attention refinement)."""
    timesteps = scheduler.timesteps
    stop = len(timesteps) if stop is None else stop
    if not 0 <= start <= stop <= len(timesteps):
        raise ValueError(f"bad step range [{start}, {stop}) for {len(timesteps)} steps")
    for i in range(start, stop):
        t = timesteps[i]
        if prepare is not None:
            latents = prepare({"step": i, "t": t, "latents": latents})
        model_in = scheduler.scale_model_input(latents, t)
        model_output, x0 = denoiser.denoise(model_in, t, cond)
        if callback is not None:
            callback({"step": i, "t": t, "latents": latents, "x0": x0, "model_output": model_output})
        latents = scheduler.step(model_output, t, latents).prev_sample
    return latents
