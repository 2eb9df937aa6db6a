"""Pixel CLIP: VAE-decode latents, then a transformers `CLIPModel` on the pixels (the expensive baseline)."""

from __future__ import annotations

import torch
from transformers import CLIPModel, CLIPTokenizer

from ..adapters import decode_latents
from .base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPScorer, as_prompts, clip_preprocess, image_stats


class PixelCLIPScorer(CLIPScorer):
    """CLIPScore (Hessel et al., 2021) with CLIP (Radford et al., 2021) on [0, 1] RGB images."""

    space = "pixels"
    kind = "pixel"

    def __init__(
        self,
        clip: CLIPModel,
        tokenizer,
        vae=None,
        vae_scaling_factor: float | None = None,
        image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
        image_std: tuple[float, ...] = OPENAI_CLIP_STD,
    ):
        super().__init__(clip, tokenizer)
        if vae_scaling_factor is None and vae is not None:
            vae_scaling_factor = float(vae.config.scaling_factor)
        self.vae = vae
        self.vae_scaling_factor = vae_scaling_factor
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, -1, 1, 1), persistent=False)

    def image_features(self, x: torch.Tensor, t: torch.Tensor | int | None) -> torch.Tensor:
        size = self.clip.config.vision_config.image_size
        pixels = clip_preprocess(x, size, self.image_mean, self.image_std)
        return self.clip.get_image_features(pixel_values=pixels).pooler_output

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as the pipeline produces them (scaled) -> images in [0, 1], differentiably."""
        if self.vae is None:
            raise ValueError("this PixelCLIPScorer has no VAE: pass vae= to score latents")
        if latents.ndim != 4 or latents.shape[1] != self.vae.config.latent_channels:
            raise ValueError(f"the VAE decodes {self.vae.config.latent_channels}-channel NCHW latents")
        self.cost.vae_decodes += latents.shape[0]
        return decode_latents(self.vae, latents, self.vae_scaling_factor)

    def score_latents(self, latents: torch.Tensor, prompts: str | list[str]) -> torch.Tensor:
        """Decode the pipeline's latents with the VAE, then `score` the pixels."""
        as_prompts(prompts, latents.shape[0])
        return self.score(self.decode(latents), prompts)

    def scorer_config(self) -> dict:
        return {
            "vae_scaling_factor": self.vae_scaling_factor,
            "image_mean": self.image_mean.flatten().tolist(),
            "image_std": self.image_std.flatten().tolist(),
        }

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, vae=None, vae_scaling_factor: float | None = None, **kwargs
    ) -> PixelCLIPScorer:
        """A Hub id or local folder holding a CLIPModel, its tokenizer and (optionally) preprocessor_config.json."""
        clip = CLIPModel.from_pretrained(name_or_path, **{"use_safetensors": True, **kwargs}).eval()
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path)
        mean, std = image_stats(name_or_path)
        return cls(clip, tokenizer, vae=vae, vae_scaling_factor=vae_scaling_factor, image_mean=mean, image_std=std)
