"""Noise projection (arXiv 2510.14526): a text-conditioned projector maps the Gaussian initial noise to
prompt-aware noise in one forward pass, and the pipeline denoises that instead.

The projector reads the noise (its latent cells as tokens, with 2-D sine positions) and the prompt's encoder
states (the pipeline's own `prompt_embeds`, by cross-attention), and returns a per-cell mean and log standard
deviation: refined = mu + sigma * noise. Its output layer starts at zero, so an untrained projector is the identity
and generation with it is plain generation. `latentalign train projector` trains one (see
`latentalign.training.projector`); `save_projector` / `load_projector` write and read `projector.json` (the
architecture) and `projector.safetensors`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from ..files import file_stamp, read_json, read_safetensors
from .base import NoiseStage, register

CONFIG_FILE, WEIGHTS_FILE = "projector.json", "projector.safetensors"
WEIGHTS = Path(__file__).parents[1] / "weights"
SHIPPED_PROJECTORS = {
    "shapes-projector": WEIGHTS / "shapes_projector",  # the reward recipe, through shapes-one-step
    "shapes-projector-flow": WEIGHTS / "shapes_projector_flow",  # the reward recipe, through shapes-flow
    # the paper recipe (quasi-DPO against a noise reward model), one per pipeline it was trained for
    "shapes-projector-paper-one-step": WEIGHTS / "shapes_projector_paper_one_step",
    "shapes-projector-paper-shapes": WEIGHTS / "shapes_projector_paper_shapes",
}
# the shipped name `train projector --ship` gives the reward recipe's projector for each embedded pipeline
REWARD_PROJECTOR_NAMES = {"shapes-one-step": "shapes-projector", "shapes-flow": "shapes-projector-flow"}


@dataclass(frozen=True)
class NoiseProjectorConfig:
    """The projector's architecture (saved as projector.json beside its weights)."""

    latent_channels: int = 4  # the pipeline's latent channels (4 for SD 1.x/2.x/XL, 16 for SD3)
    text_dim: int = 64  # the width of the pipeline's prompt_embeds (768 for SD 1.x, 2048 SDXL, 4096 SD3)
    width: int = 128
    layers: int = 2  # blocks of self-attention over cells, cross-attention to the prompt, MLP
    heads: int = 4

    def __post_init__(self):
        for name in ("latent_channels", "text_dim", "width", "layers", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads or self.width % 4:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads}) and of 4")


def sine_positions(height: int, width: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position features of a height x width grid, (height * width, dim); dim is a multiple of 4."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(quarter) / quarter)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ay, ax = ys.flatten()[:, None] * freqs, xs.flatten()[:, None] * freqs
    return torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)


class _Block(nn.Module):
    def __init__(self, cfg: NoiseProjectorConfig):
        super().__init__()
        w = cfg.width
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(w), nn.LayerNorm(w), nn.LayerNorm(w)
        self.self_attn = nn.MultiheadAttention(w, cfg.heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(w, cfg.heads, kdim=cfg.text_dim, vdim=cfg.text_dim, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.GELU(), nn.Linear(4 * w, w))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        x = x + self.cross_attn(self.norm2(x), text, text, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


class NoiseProjector(nn.Module):
    """noise (B, C, H, W) and prompt_embeds (B, L, D) -> (mu, log_sigma), each (B, C, H, W)."""

    def __init__(self, config: NoiseProjectorConfig = NoiseProjectorConfig()):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.latent_channels, config.width)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        self.out = nn.Linear(config.width, 2 * config.latent_channels)
        nn.init.zeros_(self.out.weight)  # mu = 0, log sigma = 0: the identity until trained
        nn.init.zeros_(self.out.bias)

    def forward(self, noise: torch.Tensor, prompt_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = noise.shape
        if c != self.config.latent_channels or prompt_embeds.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"this projector reads {self.config.latent_channels}-channel noise and {self.config.text_dim}-wide "
                f"prompt embeddings, got {c} and {prompt_embeds.shape[-1]}"
            )
        dtype = self.embed.weight.dtype
        x = self.embed(noise.to(dtype).flatten(2).transpose(1, 2))
        x = x + sine_positions(h, w, self.config.width).to(x.device, dtype)
        text = prompt_embeds.to(dtype)
        for block in self.blocks:
            x = block(x, text)
        out = self.out(self.norm(x)).transpose(1, 2).reshape(b, 2 * c, h, w)
        mu, log_sigma = (part.contiguous() for part in out.chunk(2, dim=1))
        return mu, log_sigma

    def project(self, noise: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """The refined noise mu + sigma * noise, in the noise's dtype."""
        mu, log_sigma = self(noise, prompt_embeds)
        # contiguous: the sum takes mu's strides (a transposed view), and a strided input changes the UNet's conv
        # kernels, so an identity projector would no longer be bit-for-bit plain generation
        return (mu + log_sigma.exp() * noise.to(mu.dtype)).to(noise.dtype).contiguous()


def projection_kl(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over the latent's elements, per sample, in fp32: the paper's term that
    keeps the refined noise near the prior the generator was trained on."""
    mu, log_sigma = mu.float().flatten(1), log_sigma.float().flatten(1)
    return 0.5 * (mu.pow(2) + (2 * log_sigma).exp() - 1 - 2 * log_sigma).sum(1)


def save_projector(projector: NoiseProjector, folder: str | Path, extra: dict | None = None) -> Path:
    """Write projector.json (architecture, plus `extra` such as the training record under "training") and the
    weights as safetensors into `folder`, atomically (a fresh folder swapped in with one rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        save_file({k: v.contiguous() for k, v in projector.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps({**asdict(projector.config), **(extra or {})}, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_projector(source: str | Path) -> NoiseProjector:
    """A projector by shipped name ("shapes-projector") or folder (what `save_projector` wrote)."""
    folder = SHIPPED_PROJECTORS.get(str(source), Path(source))
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        names = ", ".join(SHIPPED_PROJECTORS)
        raise ValueError(f"no projector at {source!r}: pass a shipped name ({names}) or a save_projector folder")
    fields = NoiseProjectorConfig.__dataclass_fields__
    config = NoiseProjectorConfig(**{k: v for k, v in read_json(folder / CONFIG_FILE).items() if k in fields})
    projector = NoiseProjector(config)
    projector.load_state_dict(read_safetensors(folder / WEIGHTS_FILE))
    return projector.eval().requires_grad_(False)


def ship_projector(folder: str | Path, name: str = "shapes-projector") -> Path:
    """Copy a trained projector folder into the package under a shipped name (see `SHIPPED_PROJECTORS`)."""
    if name not in SHIPPED_PROJECTORS:
        raise ValueError(f"no shipped projector is called {name!r}: choose from {', '.join(SHIPPED_PROJECTORS)}")
    target = SHIPPED_PROJECTORS[name]
    load_projector(folder)  # refuse anything that is not a projector before touching the package
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target)
    return target


_LOADED: dict[tuple, NoiseProjector] = {}


def shared_projector(source: str | Path) -> NoiseProjector:
    """`load_projector`, once per process while the folder's files are unchanged (`generate` in a loop reuses it)."""
    folder = SHIPPED_PROJECTORS.get(str(source), Path(source))
    key = (str(folder.resolve()), file_stamp(folder))
    if key not in _LOADED:
        _LOADED[key] = load_projector(source)
    return _LOADED[key]


def resolve_projector(projector: NoiseProjector | str | Path | None) -> NoiseProjector:
    """A projector object, or a folder or shipped name (loaded once per process)."""
    if isinstance(projector, NoiseProjector):
        return projector
    if projector is None:
        raise ValueError("noise projection needs projector=... (a folder from `latentalign train projector`)")
    if not isinstance(projector, (str, Path)):
        raise ValueError(
            f"projector must be a NoiseProjector, a folder or a shipped name, got {type(projector).__name__}"
        )
    return shared_projector(projector)


@register
@dataclass(frozen=True)
class NoiseProjection(NoiseStage):
    """Noise projection: each row's Gaussian noise, projected with its prompt's embeddings, is what the pipeline
    denoises (the same schedulers, step noise and guidance as plain generation). `cost.projector_calls` counts the
    extra forward passes."""

    name: ClassVar[str] = "noise-projection"

    projector: NoiseProjector | str | Path | None = None  # None: the one the pipeline's latentalign.json names

    def prepare(self, run) -> NoiseProjection:
        projector = resolve_projector(self.projector)
        channels, text_dim = run.den.latent_shape[0], run.den.text_dim
        if (projector.config.latent_channels, projector.config.text_dim) != (channels, text_dim):
            raise ValueError(
                f"the projector was built for {projector.config.latent_channels}-channel latents and "
                f"{projector.config.text_dim}-wide prompt embeddings; this pipeline has {channels} and {text_dim}"
            )
        return replace(self, projector=projector.to(run.den.device))

    def initial_noise(self, run, noise: torch.Tensor, rows: list[int], generators) -> tuple[torch.Tensor, None]:
        projected = self.projector.project(noise, run.row_cond(rows).prompt_embeds)
        run.cost.projector_calls += len(rows)
        return projected, None

    def record(self) -> dict:
        config = self.projector.config if isinstance(self.projector, NoiseProjector) else None
        return {"projector": asdict(config) if config is not None else str(self.projector)}
