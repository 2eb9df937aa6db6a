"""Tiny random-weight pipelines, built the way diffusers' tests build theirs (`get_dummy_components()`)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from latentalign import load_pipeline
from latentalign.pipeline import assemble, build_shapes_components
from latentalign.tokenizer import build_clip_tokenizer

TINY_WORDS = ["a", "an", "and", "photo", "of", "cat", "dog", "red", "blue", "ball", "on", "grass", "painting"]
SHAPES_DEFAULTS = {"num_inference_steps": 3, "guidance_scale": 2.0, "world": "shapes"}


TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    norm_num_groups=32,
)


def _tiny_vae(scaling_factor: float = 0.18215, shift_factor: float | None = None) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def _tiny_text_config(tokenizer, **overrides) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )


def tiny_sd_components() -> dict:
    """A Stable Diffusion 1.x-style pipeline's parts with random weights: 8x8 latents, 16x16 images."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    vae = _tiny_vae()
    tokenizer = build_clip_tokenizer(TINY_WORDS, model_max_length=77)
    torch.manual_seed(0)
    return {
        "unet": unet,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": CLIPTextModel(_tiny_text_config(tokenizer)).eval(),
        "tokenizer": tokenizer,
    }


def tiny_sdxl_components() -> dict:
    """An SDXL-style pipeline's parts with random weights (as diffusers' SDXL tests build them): two text encoders
    whose hidden states are concatenated, a pooled projection and size/crop time ids as added conditioning, an
    Euler scheduler (scaled model input), SDXL's VAE scaling factor; 8x8 latents, 16x16 images."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **{**TINY_UNET, "cross_attention_dim": 64},  # 32 + 32: both encoders' hidden states
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids + the pooled projection
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    vae = _tiny_vae(scaling_factor=0.13025)
    tokenizer = build_clip_tokenizer(TINY_WORDS, model_max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_tiny_text_config(tokenizer)).eval()
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(tokenizer, projection_dim=32)).eval()
    return {
        "unet": unet,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
    }


@pytest.fixture(scope="session")
def tiny_sd_pipeline() -> StableDiffusionPipeline:
    # Like diffusers' dummy components, the scheduler leaves steps_offset at 0, so the pipeline patches it to 1
    # (with a FutureWarning): the adapter must follow the patched config, not the class defaults.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*steps_offset", category=FutureWarning)
        pipe = StableDiffusionPipeline(
            **tiny_sd_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_components() -> dict:
    """An SD3-style pipeline's parts with random weights (as diffusers' SD3 tests build them, without T5, which the
    pipeline then replaces by zeros): an MMDiT transformer predicting flow-matching velocity, two CLIP text encoders
    with projections (pooled), a flow-matching Euler scheduler, SD3's shifted and scaled VAE latents; 8x8 latents."""
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,  # both encoders' pooled projections
        out_channels=4,
    )
    tokenizer = build_clip_tokenizer(TINY_WORDS, model_max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(_tiny_text_config(tokenizer, projection_dim=32)).eval()
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(tokenizer, projection_dim=32)).eval()
    return {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": _tiny_vae(scaling_factor=1.5035, shift_factor=0.0609),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "text_encoder_3": None,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "tokenizer_3": None,
    }


@pytest.fixture(scope="session")
def tiny_sd3_pipeline() -> StableDiffusion3Pipeline:
    pipe = StableDiffusion3Pipeline(**tiny_sd3_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_shapes_path(tmp_path_factory):
    """A saved random-weight Shapes pipeline folder, with its `latentalign.json` defaults."""
    path = tmp_path_factory.mktemp("shapes") / "pipeline"
    assemble(build_shapes_components(0)).save_pretrained(path, safe_serialization=True)
    (path / "latentalign.json").write_text(json.dumps(SHAPES_DEFAULTS))
    return path


@pytest.fixture(scope="session")
def tiny_shapes_pipeline(tiny_shapes_path):
    return load_pipeline(str(tiny_shapes_path))
