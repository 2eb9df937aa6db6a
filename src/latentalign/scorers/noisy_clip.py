"""NoisyCLIP: CLIP on the noisy latent z_t, conditioned on the timestep.

The published model reads a fixed linear RGB preview of z_t (clamped to [0, 1]); a scorer built without a
preview map reads the (unscaled) latent channels directly, as Latent-CLIP does, so no noise is clipped away; one
built with a stem (`LatentStem`) reads them through a convolutional stem that also sees t (`distill_latent_clip`
with `student="noisy"` trains one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer

from .base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPScorer, clip_preprocess, image_stats
from .latent_clip import LatentStem

# The community SDXL "latent preview" factors (0-255 RGB per latent channel, applied to the pipeline's scaled
# latents), the map the published NoisyCLIP was trained with. They fit SDXL's VAE only: users of another VAE
# should pass their own map, e.g. from `fit_preview_map`.
SDXL_PREVIEW_MATRIX = ((60.0, -60.0, 25.0, -70.0), (60.0, -5.0, 15.0, -50.0), (60.0, 10.0, -5.0, -35.0))
SDXL_PREVIEW_BIAS = (150.0, 140.0, 130.0)
SDXL_SCALING_FACTOR = 0.13025


def sdxl_preview_map() -> tuple[torch.Tensor, torch.Tensor]:
    """The SDXL preview factors as a map from unscaled latents to [0, 1] RGB: `(matrix (3, 4), bias (3,))`."""
    return torch.tensor(SDXL_PREVIEW_MATRIX) * SDXL_SCALING_FACTOR / 255, torch.tensor(SDXL_PREVIEW_BIAS) / 255


def fit_preview_map(latents: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares linear map from unscaled latents (N, C, h, w) to images (N, 3, H, W) area-downsampled to h x w."""
    if latents.ndim != 4 or images.ndim != 4 or latents.shape[0] != images.shape[0] or images.shape[1] != 3:
        raise ValueError("fit_preview_map takes latents (N, C, h, w) and RGB images (N, 3, H, W)")
    target = F.adaptive_avg_pool2d(images.double(), latents.shape[-2:])
    z = latents.double().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    design = torch.cat([z, torch.ones_like(z[:, :1])], dim=1)
    solution = torch.linalg.lstsq(design, target.permute(0, 2, 3, 1).reshape(-1, 3)).solution
    return solution[:-1].T.float().contiguous(), solution[-1].float().contiguous()


class TimestepEmbedding(torch.nn.Module):
    """Fourier features of t/1000 through an MLP whose output layer starts at zero, so it starts as a no-op."""

    def __init__(self, width: int, features: int = 16):
        super().__init__()
        self.register_buffer("frequencies", torch.logspace(0, 3, features), persistent=False)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(2 * features, width), torch.nn.SiLU(), torch.nn.Linear(width, width)
        )
        torch.nn.init.zeros_(self.mlp[-1].weight)
        torch.nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = (t.float() / 1000)[:, None] * self.frequencies
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class NoisyCLIPScorer(CLIPScorer):
    """NoisyCLIP (Ramos et al., arXiv 2512.08505): alignment of noisy latents z_t.

    With `preview_matrix`/`preview_bias` (the published layout) the vision tower reads the clamped linear RGB
    preview of z_t; with both None it reads z_t / vae_scaling_factor channel for channel at latent resolution;
    with `stem` (a `LatentStem` config whose `in_channels` are the latent channels plus one) a convolutional stem
    reads z_t / vae_scaling_factor beside a constant plane t / 1000, and the tower reads its output cell for cell.
    """

    space = "noisy_latents"
    kind = "noisy"
    needs_t = True

    def __init__(
        self,
        clip: CLIPModel,
        tokenizer,
        vae_scaling_factor: float,
        preview_matrix: torch.Tensor | list | None = None,
        preview_bias: torch.Tensor | list | None = None,
        image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
        image_std: tuple[float, ...] = OPENAI_CLIP_STD,
        stem: dict | None = None,
    ):
        super().__init__(clip, tokenizer)
        self.vae_scaling_factor = float(vae_scaling_factor)
        if (preview_matrix is None) != (preview_bias is None):
            raise ValueError("pass both preview_matrix and preview_bias, or neither (read the latents directly)")
        self.stem = None
        if stem is not None:
            if preview_matrix is not None:
                raise ValueError("a NoisyCLIP reads either a preview map or a stem, not both")
            self.stem = LatentStem.for_tower(stem, clip)
            if self.stem.config["in_channels"] < 2:
                raise ValueError("a NoisyCLIP stem reads the latent channels plus a timestep plane: in_channels >= 2")
        matrix = bias = None  # None buffers: no preview, the tower reads the latents
        if preview_matrix is not None:
            matrix, bias = torch.as_tensor(preview_matrix, dtype=torch.float32), torch.as_tensor(preview_bias).float()
            rgb = clip.config.vision_config.num_channels
            if matrix.ndim != 2 or matrix.shape[0] != rgb or bias.shape != (rgb,):
                raise ValueError(
                    f"preview map must be a ({rgb}, C) matrix and a ({rgb},) bias, got {tuple(matrix.shape)}"
                )
        self.register_buffer("preview_matrix", matrix, persistent=False)
        self.register_buffer("preview_bias", bias, persistent=False)
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, -1, 1, 1), persistent=False)
        self.timestep_embedding = TimestepEmbedding(clip.config.vision_config.hidden_size)

    @property
    def in_channels(self) -> int:
        if self.stem is not None:
            return self.stem.config["in_channels"] - 1  # the last stem channel is the timestep plane
        if self.preview_matrix is None:
            return self.clip.config.vision_config.num_channels
        return self.preview_matrix.shape[1]

    @property
    def latent_size(self) -> int | None:
        # the preview is resized by CLIP preprocessing; raw latents go to the tower as they are
        return self.clip.config.vision_config.image_size if self.preview_matrix is None else None

    def stem_cells(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the vision tower's patch embedding reads: the stem's output (batch, width, h, w) for a stem scorer,
        else the unscaled latents or the preprocessed preview. `t` has one entry per latent."""
        if self.stem is not None:
            plane = (t.float() / 1000).to(x.dtype)[:, None, None, None].expand(-1, 1, *x.shape[-2:])
            return self.stem(torch.cat([self.raw_latents(x), plane], dim=1))
        if self.preview_matrix is None:
            return self.raw_latents(x)
        size = self.clip.config.vision_config.image_size
        return clip_preprocess(self.preview(x), size, self.image_mean, self.image_std)

    def tower_features(self, cells: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The vision tower and projection on `stem_cells`' output, with the timestep embedding on the class token."""
        vision = self.clip.vision_model
        h = vision.embeddings(cells)
        h = torch.cat([h[:, :1] + self.timestep_embedding(t)[:, None].to(h.dtype), h[:, 1:]], dim=1)
        h = vision.encoder(inputs_embeds=vision.pre_layrnorm(h)).last_hidden_state
        return self.clip.visual_projection(vision.post_layernorm(h[:, 0]))

    def preview(self, z: torch.Tensor) -> torch.Tensor:
        """The pipeline's (scaled) latents -> the fixed linear RGB preview in [0, 1], at latent resolution."""
        if self.preview_matrix is None:
            raise ValueError("this NoisyCLIP reads latents directly: it has no preview map")
        rgb = torch.einsum("oc,nchw->nohw", self.preview_matrix.to(z.dtype), self.raw_latents(z))
        return (rgb + self.preview_bias.to(z.dtype)[:, None, None]).clamp(0, 1)

    def image_features(self, x: torch.Tensor, t: torch.Tensor | int | None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).flatten().expand(x.shape[0])
        return self.tower_features(self.stem_cells(x, t), t)

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        modules = {"timestep_embedding": self.timestep_embedding}
        return modules if self.stem is None else {**modules, "latent_stem": self.stem}

    def scorer_config(self) -> dict:
        return {
            "vae_scaling_factor": self.vae_scaling_factor,
            "preview_matrix": None if self.preview_matrix is None else self.preview_matrix.tolist(),
            "preview_bias": None if self.preview_bias is None else self.preview_bias.tolist(),
            "image_mean": self.image_mean.flatten().tolist(),
            "image_std": self.image_std.flatten().tolist(),
        } | ({} if self.stem is None else {"stem": self.stem.config})

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        preview_map: tuple[torch.Tensor, torch.Tensor] | None = None,
        vae_scaling_factor: float = SDXL_SCALING_FACTOR,
        **kwargs,
    ) -> NoisyCLIPScorer:
        """The published NoisyCLIP layout (a CLIPModel, e.g. "asiimo/noisyclip") plus a preview map on unscaled
        latents (default: SDXL's). Published models have no timestep embedding: it stays zero."""
        clip = CLIPModel.from_pretrained(name_or_path, **{"use_safetensors": True, **kwargs}).eval()
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path)
        mean, std = image_stats(name_or_path)
        matrix, bias = preview_map if preview_map is not None else sdxl_preview_map()
        return cls(clip, tokenizer, vae_scaling_factor, matrix, bias, image_mean=mean, image_std=std)
