"""One interface for CLIP-style alignment scorers that read pixels, clean latents or noisy latents."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers.utils import cached_file

from ..cost import Cost

SPACES = ("pixels", "latents", "noisy_latents")
# The RGB statistics OpenAI CLIP was trained with; used when a checkpoint ships no preprocessor_config.json.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_stats(name_or_path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`image_mean` and `image_std` from a checkpoint's preprocessor_config.json, else OpenAI CLIP's."""
    path = cached_file(name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    if path is None:
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    cfg = json.loads(Path(path).read_text())
    return tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)), tuple(cfg.get("image_std", OPENAI_CLIP_STD))


def clip_preprocess(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """CLIP's resize-shorter-side, centre-crop and normalise, on tensors so gradients flow (as ReNO does)."""
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        # antialiased resizing has no half-precision CPU kernel: resize in float32, then back to the input's dtype
        x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False).to(x.dtype)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    return (x - mean) / std


def as_prompts(prompts: str | list[str], batch: int | None = None) -> list[str]:
    """Validate prompts: a string or a non-empty list of strings, of length 1 or `batch`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list | tuple) or not prompts:
        raise ValueError("prompts must be a string or a non-empty list of strings")
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError("every prompt must be a string")
    if batch is not None and len(prompts) not in (1, batch):
        raise ValueError(f"got {len(prompts)} prompts for a batch of {batch}: pass one prompt or one per input")
    return list(prompts)


class Scorer(nn.Module):
    """The one scorer interface: `score(x, prompts, t=None) -> (batch,)`, higher is better, over a declared space.

    CLIP-style dual encoders (`CLIPScorer`) return a cosine; a cross-encoder judge (`LatentJudge`) log-odds.
    """

    space: str = ""  # one of SPACES: what `score` reads
    kind: str = ""  # the name `save_scorer` records: "pixel", "latent", "noisy" or "judge"
    needs_t: bool = False
    # whether `score` of latents reads their decode and takes it as `pixels=` (a ScoreSum with a pixel member), so a
    # method that decodes anyway passes its own decode, counted in its cost
    reads_pixels: bool = False
    # latent scorers read raw VAE latents: the pipeline's latents / vae_scaling_factor + vae_shift_factor
    vae_scaling_factor: float | None = None
    vae_shift_factor: float = 0.0

    def __init__(self):
        super().__init__()
        self.cost = Cost()

    @property
    def in_channels(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def raw_latents(self, x: torch.Tensor) -> torch.Tensor:
        """The pipeline's latents as the VAE's encoder gives them (undoing the pipeline's scaling and shift)."""
        return x / self.vae_scaling_factor + self.vae_shift_factor

    def for_pipeline_latents(self, vae) -> Scorer:
        """This scorer reading latents as a pipeline with `vae` makes them (its `scaling_factor`, and SD3's
        `shift_factor`): a shallow copy sharing the weights when they differ from the saved ones, else itself.
        One VAE serves pipelines with different latent conventions ("shapes" and "shapes-flow" share theirs)."""
        from ..adapters import vae_shift

        if self.vae_scaling_factor is None:
            return self
        scaling, shift = float(vae.config.scaling_factor), vae_shift(vae)
        if (scaling, shift) == (self.vae_scaling_factor, self.vae_shift_factor):
            return self
        view = copy.copy(self)
        view.vae_scaling_factor, view.vae_shift_factor = scaling, shift
        return view

    @property
    def latent_size(self) -> int | None:
        """The height and width of latents the vision tower reads as they are (no resizing); None if it resizes."""
        return None

    def check_input(self, x: torch.Tensor, t: torch.Tensor | int | None = None) -> None:
        """Raise a short ValueError for input this scorer cannot read."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} takes a float NCHW tensor ({self.space})")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} reads {self.in_channels}-channel {self.space}, got {x.shape[1]}")
        size = self.latent_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"{type(self).__name__} reads {size}x{size} latents, got {tuple(x.shape[-2:])}")
        if self.needs_t and t is None:
            raise ValueError(f"{type(self).__name__} scores noisy latents: pass the timestep t")
        if t is not None and isinstance(t, torch.Tensor) and t.numel() not in (1, x.shape[0]):
            raise ValueError(f"got {t.numel()} timesteps for a batch of {x.shape[0]}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{type(self).__name__} got NaN or infinite {self.space}")
        if self.space == "pixels" and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise ValueError(
                f"{type(self).__name__} reads pixels in [0, 1], got values in [{x.min():.3g}, {x.max():.3g}]"
            )
        if t is not None:
            steps = torch.as_tensor(t).float()
            if not bool((torch.isfinite(steps) & (steps >= 0) & (steps <= 1000)).all()):
                raise ValueError(f"timesteps must be finite and in [0, 1000], got {steps.flatten()[:4].tolist()}")

    def score(self, x: torch.Tensor, prompts: str | list[str], t: torch.Tensor | int | None = None) -> torch.Tensor:
        """One score per input (higher: better aligned with its prompt, or the one prompt), shape (batch,)."""
        raise NotImplementedError

    def extra_modules(self) -> dict[str, nn.Module]:
        """Trained modules besides the main weights, by name; `save_scorer` writes each to `<name>.safetensors`."""
        return {}

    def scorer_config(self) -> dict:
        """The JSON-able constructor arguments `save_scorer` records besides the weights and tokenizer."""
        return {}


class CLIPScorer(Scorer):
    """CLIPScore (Hessel et al., 2021): cosine similarity of L2-normalised CLIP image and text embeddings."""

    def __init__(self, clip: CLIPModel, tokenizer):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer

    @property
    def in_channels(self) -> int:
        return self.clip.config.vision_config.num_channels

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def image_features(self, x: torch.Tensor, t: torch.Tensor | int | None) -> torch.Tensor:
        """Unnormalised projected image embeddings of checked input."""
        raise NotImplementedError

    def embed_images(self, x: torch.Tensor, t: torch.Tensor | int | None = None) -> torch.Tensor:
        """L2-normalised image embeddings, (batch, projection_dim)."""
        self.check_input(x, t)
        self.cost.scorer_calls += x.shape[0]
        # a scorer in one dtype reads a pipeline in another (a float32 scorer beside a bfloat16 pipeline)
        x = x.to(self.clip.logit_scale.dtype)
        return F.normalize(self.image_features(x, t), dim=-1)

    def embed_text(self, prompts: str | list[str]) -> torch.Tensor:
        """L2-normalised text embeddings, (len(prompts), projection_dim)."""
        prompts = as_prompts(prompts)
        max_length = self.clip.config.text_config.max_position_embeddings
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out = self.clip.get_text_features(
            input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
        )
        return F.normalize(out.pooler_output, dim=-1)

    def score(self, x: torch.Tensor, prompts: str | list[str], t: torch.Tensor | int | None = None) -> torch.Tensor:
        """Cosine similarity in [-1, 1] of each input with its prompt (or the one prompt), shape (batch,).

        `t` (an int, or one timestep per input) is read by noisy-latent scorers only; the others ignore it.
        """
        prompts = as_prompts(prompts, x.shape[0] if isinstance(x, torch.Tensor) and x.ndim else None)
        return (self.embed_images(x, t) * self.embed_text(prompts)).sum(-1).float()  # embed_images checks x

    def classify(self, x: torch.Tensor, labels: list[str], t: torch.Tensor | int | None = None) -> torch.Tensor:
        """Zero-shot label probabilities, softmax(logit_scale.exp() * img @ txt.T), shape (batch, len(labels))."""
        self.check_input(x, t)
        labels = as_prompts(labels)
        logits = self.clip.logit_scale.exp() * self.embed_images(x, t) @ self.embed_text(labels).T
        return logits.softmax(-1)
