"""Latent-CLIP: a CLIP whose vision tower reads VAE latents directly, and a loader for open_clip checkpoints."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel

from ..files import read_safetensors
from .base import CLIPScorer

# open_clip block -> transformers CLIPEncoderLayer; in_proj is split into q/k/v separately.
_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


class LatentStem(nn.Module):
    """A convolutional stem (Xiao et al., 2021, "Early convolutions help transformers see better") on the latent
    grid: `layers` 3x3 convolutions with GELU, from the latent channels to `width` channels per cell."""

    def __init__(self, in_channels: int = 4, width: int = 128, layers: int = 3):
        super().__init__()
        if in_channels < 1 or width < 1 or layers < 1:
            raise ValueError(f"a latent stem needs in_channels, width, layers >= 1, got {in_channels, width, layers}")
        self.config = {"in_channels": in_channels, "width": width, "layers": layers}
        convs = []
        for i in range(layers):
            convs += [nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1), nn.GELU()]
        self.net = nn.Sequential(*convs)

    @classmethod
    def for_tower(cls, config: dict, clip: CLIPModel) -> LatentStem:
        """A stem from `config` after checking that `clip`'s vision tower reads its output cell for cell."""
        stem = cls(**config)
        vision = clip.config.vision_config
        if vision.num_channels != stem.config["width"] or vision.patch_size != 1:
            raise ValueError(
                f"a stem of width {stem.config['width']} needs a vision tower with num_channels "
                f"{stem.config['width']} and patch_size 1, got {vision.num_channels} and {vision.patch_size}"
            )
        return stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LatentCLIPScorer(CLIPScorer):
    """Latent-CLIP (Wendler et al., arXiv 2503.08455): CLIPScore on VAE latents, no decode.

    With `stem` (a `LatentStem` config) a convolutional stem reads the latents and the vision tower reads its
    output cell for cell (`num_channels` = the stem's width, patch size 1); `distill_latent_clip` trains one.
    """

    space = "latents"
    kind = "latent"

    def __init__(self, clip: CLIPModel, tokenizer, vae_scaling_factor: float, stem: dict | None = None):
        super().__init__(clip, tokenizer)
        self.vae_scaling_factor = float(vae_scaling_factor)
        self.stem = None if stem is None else LatentStem.for_tower(stem, clip)

    @property
    def in_channels(self) -> int:
        return self.clip.config.vision_config.num_channels if self.stem is None else self.stem.config["in_channels"]

    @property
    def latent_size(self) -> int:
        return self.clip.config.vision_config.image_size

    def stem_cells(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """What the vision tower's patch embedding reads: the unscaled latents, through the stem if there is one."""
        # Latent-CLIP was trained on raw VAE posterior samples; the pipeline's latents carry the scaling factor
        # (and SD3-style pipelines a shift: `Scorer.for_pipeline_latents`)
        x = x / self.vae_scaling_factor + self.vae_shift_factor
        return x if self.stem is None else self.stem(x)

    def tower_features(self, cells: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """The vision tower and projection on `stem_cells`' output."""
        return self.clip.get_image_features(pixel_values=cells).pooler_output

    def image_features(self, x: torch.Tensor, t: torch.Tensor | int | None) -> torch.Tensor:
        return self.tower_features(self.stem_cells(x))

    def extra_modules(self) -> dict[str, nn.Module]:
        return {} if self.stem is None else {"latent_stem": self.stem}

    def scorer_config(self) -> dict:
        config = {"vae_scaling_factor": self.vae_scaling_factor}
        return config if self.stem is None else {**config, "stem": self.stem.config}

    @classmethod
    def from_open_clip(
        cls, path: str | Path, tokenizer, vae_scaling_factor: float, *, hidden_act: str = "gelu"
    ) -> LatentCLIPScorer:
        """Load a published Latent-CLIP checkpoint (an open_clip state dict saved as safetensors)."""
        config, state = convert_open_clip_state_dict(read_safetensors(path), hidden_act=hidden_act)
        if len(tokenizer) > config.text_config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the checkpoint {config.text_config.vocab_size}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(config.text_config, name, getattr(tokenizer, name))
        clip = CLIPModel(config)
        clip.load_state_dict(state, strict=True)
        return cls(clip.eval(), tokenizer, vae_scaling_factor)


class _Reader:
    """Reads keys of a state dict, failing clearly on a missing one and remembering which were read."""

    def __init__(self, sd: dict[str, torch.Tensor]):
        self.sd, self.read = sd, set()

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            raise ValueError(f"not an open_clip CLIP state dict: missing {key!r}")
        self.read.add(key)
        return self.sd[key]


def _layers(sd: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if not ids:
        raise ValueError(f"not an open_clip CLIP state dict: no {prefix}<i> blocks")
    return max(ids) + 1


def _tower(need: _Reader, src: str, dst: str, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        s, d = f"{src}{i}.", f"{dst}{i}."
        for kind in ("weight", "bias"):
            q, k, v = need(f"{s}attn.in_proj_{kind}").chunk(3, dim=0)
            out |= {
                f"{d}self_attn.q_proj.{kind}": q,
                f"{d}self_attn.k_proj.{kind}": k,
                f"{d}self_attn.v_proj.{kind}": v,
            }
            out |= {f"{d}{new}.{kind}": need(f"{s}{old}.{kind}") for old, new in _BLOCK.items()}
    return out


def convert_open_clip_state_dict(
    sd: dict[str, torch.Tensor], *, hidden_act: str = "gelu", head_width: int = 64
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Map an open_clip ViT CLIP state dict onto transformers' `CLIPModel`: `(config, state_dict)`.

    Geometry is read from the shapes. `hidden_act` cannot be: open_clip uses exact GELU unless the model was built
    with `quick_gelu` (OpenAI's weights). Heads are `width // head_width`, open_clip's default head width being 64.
    """
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.endswith("attn_mask")}
    need = _Reader(sd)
    conv = need("visual.conv1.weight")
    width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[-1]
    positions = need("visual.positional_embedding").shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"visual.positional_embedding has {positions} rows: not a square grid plus a class token")
    tokens = need("token_embedding.weight")
    v_layers, t_layers = _layers(sd, "visual.transformer.resblocks."), _layers(sd, "transformer.resblocks.")
    vision = dict(
        hidden_size=width,
        intermediate_size=need("visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        num_hidden_layers=v_layers,
        num_attention_heads=width // head_width,
        num_channels=channels,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act=hidden_act,
    )
    text = dict(
        vocab_size=tokens.shape[0],
        hidden_size=tokens.shape[1],
        intermediate_size=need("transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        num_hidden_layers=t_layers,
        num_attention_heads=tokens.shape[1] // head_width,
        max_position_embeddings=need("positional_embedding").shape[0],
        hidden_act=hidden_act,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=need("visual.proj").shape[1])

    out = {
        "vision_model.embeddings.patch_embedding.weight": conv,
        "vision_model.embeddings.class_embedding": need("visual.class_embedding"),
        "vision_model.embeddings.position_embedding.weight": need("visual.positional_embedding"),
        "visual_projection.weight": need("visual.proj").T.contiguous(),
        "text_model.embeddings.token_embedding.weight": tokens,
        "text_model.embeddings.position_embedding.weight": need("positional_embedding"),
        "text_projection.weight": need("text_projection").T.contiguous(),
        "logit_scale": need("logit_scale").reshape(()),
    }
    for old, new in [
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("ln_final", "text_model.final_layer_norm"),
    ]:
        out |= {f"{new}.{kind}": need(f"{old}.{kind}") for kind in ("weight", "bias")}
    out |= _tower(need, "visual.transformer.resblocks.", "vision_model.encoder.layers.", v_layers)
    out |= _tower(need, "transformer.resblocks.", "text_model.encoder.layers.", t_layers)

    if unmapped := sorted(set(sd) - need.read):
        raise ValueError(f"open_clip state dict has {len(unmapped)} keys this converter does not map: {unmapped[:4]}")
    return config, out
