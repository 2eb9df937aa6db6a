"""One adapter over diffusers pipelines: `denoise(latents, t, cond) -> (model_output, x0_pred)`.

Every method talks to pipelines only through `Denoiser`; version-specific access to diffusers internals
lives here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

from .cost import Cost


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts, and the negative (unconditional) embeddings when guidance is on."""

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    guidance_scale: float

    @property
    def guided(self) -> bool:
        return self.negative_embeds is not None

    def select(self, index: torch.Tensor | list[int]) -> Conditioning:
        """The conditioning of a subset of the batch (for pruning candidates)."""
        neg = None if self.negative_embeds is None else self.negative_embeds[index]
        return Conditioning(self.prompt_embeds[index], neg, self.guidance_scale)


class Denoiser:
    """A diffusers pipeline seen as a denoiser: UNet epsilon / v / sample prediction (SD 1.x, 2.x)."""

    def __init__(self, pipe: DiffusionPipeline, cost: Cost | None = None):
        unet = getattr(pipe, "unet", None)
        if not isinstance(unet, UNet2DConditionModel):
            raise ValueError(
                f"{type(pipe).__name__} has no UNet2DConditionModel; "
                "latentalign supports Stable Diffusion 1.x/2.x pipelines"
            )
        if unet.config.addition_embed_type is not None:
            raise ValueError(f"{type(pipe).__name__} needs added conditioning (SDXL-style), which is not supported yet")
        if not hasattr(pipe.scheduler, "alphas_cumprod"):
            raise ValueError(f"scheduler {type(pipe.scheduler).__name__} is not supported: it has no alphas_cumprod")
        self.pipe = pipe
        self.unet = unet
        self.vae = pipe.vae
        self.cost = cost if cost is not None else Cost()
        self.prediction_type = pipe.scheduler.config.prediction_type

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def new_scheduler(self, num_inference_steps: int, **overrides):
        """A fresh copy of the pipeline's scheduler, so runs never share (or mutate) scheduler state; `overrides`
        change config keys of the copy (e.g. `prediction_type`)."""
        # from_config resets every key listed in `_use_default_values` to the class default, which undoes fixes a
        # pipeline made to its scheduler's config at init (StableDiffusionPipeline sets steps_offset=1): pass all.
        config = {k: v for k, v in self.pipe.scheduler.config.items() if k != "_use_default_values"}
        scheduler = type(self.pipe.scheduler).from_config({**config, **overrides})
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        return scheduler

    def initial_latents(self, seeds: list[int]) -> torch.Tensor:
        """One Gaussian latent per seed, drawn on the CPU so a seed means the same noise on any device."""
        noise = [torch.randn((1, *self.latent_shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        sigma = float(getattr(self.pipe.scheduler, "init_noise_sigma", 1.0))
        return (torch.cat(noise) * sigma).to(self.device, self.dtype)

    def encode(
        self, prompts: list[str], guidance_scale: float, negative_prompt: list[str] | None = None
    ) -> Conditioning:
        guided = guidance_scale > 1.0
        pos, neg = self.pipe.encode_prompt(prompts, self.device, 1, guided, negative_prompt)
        return Conditioning(pos, neg if guided else None, float(guidance_scale))

    def x0_from(self, model_output: torch.Tensor, latents: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The denoised prediction (Tweedie's x0) from a model output, for the scheduler's parameterisation."""
        a = self.pipe.scheduler.alphas_cumprod.to(latents.device)[int(t)].to(latents.dtype)
        if self.prediction_type == "epsilon":
            return (latents - (1 - a).sqrt() * model_output) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * latents - (1 - a).sqrt() * model_output
        if self.prediction_type == "sample":
            return model_output
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def denoise(
        self, latents: torch.Tensor, t: torch.Tensor | int, cond: Conditioning
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One guided denoiser evaluation: `(model_output, x0_pred)`."""
        n = latents.shape[0]
        if cond.guided:
            out = self.unet(
                torch.cat([latents, latents]), t, torch.cat([cond.negative_embeds, cond.prompt_embeds])
            ).sample
            uncond, text = out.chunk(2)
            out = uncond + cond.guidance_scale * (text - uncond)
            self.cost.denoiser_evals += 2 * n
        else:
            out = self.unet(latents, t, cond.prompt_embeds).sample
            self.cost.denoiser_evals += n
        return out, self.x0_from(out, latents, t)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as the pipeline produces them -> images in [0, 1], NCHW."""
        self.cost.vae_decodes += latents.shape[0]
        images = self.vae.decode(latents / self.vae_scaling_factor).sample
        return (images / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], NCHW -> scaled latents (the posterior mean)."""
        self.cost.vae_encodes += images.shape[0]
        dist = self.vae.encode(images.to(self.device, self.dtype) * 2 - 1).latent_dist
        return dist.mean * self.vae_scaling_factor
