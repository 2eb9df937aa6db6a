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


def _tiny_t5(tokenizer, d_model: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def tiny_flux_components(guidance_embeds: bool = False) -> dict:
    """A Flux-style pipeline's parts with random weights (as diffusers' Flux tests build them, tokenizers made
    locally): a double- and a single-stream block over packed 2x2 patches (16 channels from the VAE's 4), CLIP
    pooled + T5 sequence conditioning, the guidance embedding of FLUX.1-dev when `guidance_embeds` (schnell has
    none), Flux's dynamically shifted flow-matching scheduler; 8x8 latents (16 px) by default."""
    from diffusers import FluxTransformer2DModel

    from latentalign.tokenizer import build_t5_tokenizer

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=[4, 4, 8],
    )
    tokenizer = build_clip_tokenizer(TINY_WORDS, model_max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_tiny_text_config(tokenizer, projection_dim=32)).eval()
    tokenizer_2 = build_t5_tokenizer(TINY_WORDS, model_max_length=512)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64, base_shift=0.5, max_shift=1.15
    )
    return {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": _tiny_vae(scaling_factor=0.3611, shift_factor=0.1159),
        "text_encoder": text_encoder,
        "text_encoder_2": _tiny_t5(tokenizer_2),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
    }


def tiny_flux(guidance_embeds: bool = False):
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**tiny_flux_components(guidance_embeds))
    pipe.default_sample_size = 8  # the stock default (128 latent cells) is for 1024 px; both loops read this
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_flux_pipeline():
    return tiny_flux(guidance_embeds=False)  # FLUX.1-schnell-style


@pytest.fixture(scope="session")
def tiny_flux_dev_pipeline():
    return tiny_flux(guidance_embeds=True)  # FLUX.1-dev-style: guidance-distilled


def tiny_pixart_components(scheduler=None, sample_size: int = 8) -> dict:
    """A PixArt-style pipeline's parts with random weights (as diffusers' PixArt tests build them, the T5
    tokenizer made locally): an `ada_norm_single` transformer over 2x2 patches with a learned-sigma output (8
    channels for 4), T5 conditioning with its mask; DPM-Solver++ as the released PixArt checkpoints ship."""
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    from latentalign.tokenizer import build_t5_tokenizer

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    tokenizer = build_t5_tokenizer(TINY_WORDS, model_max_length=512)
    return {
        "transformer": transformer.eval(),
        "vae": _tiny_vae(),
        "scheduler": scheduler if scheduler is not None else DPMSolverMultistepScheduler(),
        "text_encoder": _tiny_t5(tokenizer),
        "tokenizer": tokenizer,
    }


def tiny_pixart(kind: str = "alpha", scheduler=None):
    from diffusers import PixArtAlphaPipeline, PixArtSigmaPipeline

    cls = PixArtAlphaPipeline if kind == "alpha" else PixArtSigmaPipeline
    pipe = cls(**tiny_pixart_components(scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pixart_pipeline():
    return tiny_pixart("alpha")


@pytest.fixture(scope="session")
def tiny_pixart_sigma_pipeline():
    return tiny_pixart("sigma")
