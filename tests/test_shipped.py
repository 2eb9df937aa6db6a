"""The embedded Shapes pipeline as shipped: loadable by stock diffusers, consistent with the world it draws."""

from __future__ import annotations

import json

import torch
from diffusers import StableDiffusionPipeline

import latentalign
from latentalign.pipeline import SHAPES_WEIGHTS
from latentalign.world import words


def test_stock_diffusers_loads_the_shipped_pipeline():
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_WEIGHTS)
    assert pipe.vae.config.latent_channels == 4 and pipe.unet.config.sample_size == 8
    files = [p for p in SHAPES_WEIGHTS.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert not files, "weights must be safetensors"
    assert sum(p.stat().st_size for p in SHAPES_WEIGHTS.rglob("*.safetensors")) <= 40 * 2**20


def test_shipped_tokenizer_knows_every_word_of_the_world():
    tokenizer = latentalign.load_pipeline("shapes").tokenizer
    for word in words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_shipped_pipeline_generates_with_its_recommended_settings():
    pipe = latentalign.load_pipeline("shapes")
    settings = json.loads((SHAPES_WEIGHTS / "latentalign.json").read_text())
    result = latentalign.generate(pipe, ["a red circle", "two blue squares"], seed=[0, 1])
    assert result.settings == {k: settings[k] for k in ("num_inference_steps", "guidance_scale")}
    assert [im.size for im in result.images] == [(32, 32), (32, 32)]
    assert torch.isfinite(result.latents).all()
    assert result.cost.denoiser_evals == 2 * 2 * settings["num_inference_steps"]
