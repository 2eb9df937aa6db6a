"""The stock call surface: `generate` takes the pipeline's own `__call__` arguments and gives what the stock
pipeline gives, argument by argument, on tiny SD, SDXL and SD3 pipelines; defaults come from the pipeline class."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import tiny_sd_components
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, TCDScheduler
from diffusers.models.attention_processor import AttnProcessor2_0

from latentalign import generate

FAMILIES = ["sd", "sdxl", "sd3"]
PROMPTS = ["a red ball on grass", "a painting of a dog"]
KW = {"num_inference_steps": 3, "guidance_scale": 2.0}


def pipe_of(request, family):
    return request.getfixturevalue(f"tiny_{family}_pipeline")


def both(pipe, prompt=PROMPTS, *, seed: int | None = 0, **kwargs):
    """(latentalign's latents, the stock pipeline's), from equal generators and the same arguments."""
    kwargs = {**KW, **kwargs}
    mine = generate(pipe, prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs)
    stock = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).images
    return mine.latents, stock


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"guidance_scale": 1.0},
        {"num_images_per_prompt": 2},
        {"negative_prompt": ["a dog", "a cat"]},
        {"height": 32, "width": 24},
    ],
    ids=["one-generator", "unguided", "images-per-prompt", "negative-prompt", "size"],
)
def test_equals_the_stock_pipeline(request, family, arguments):
    mine, stock = both(pipe_of(request, family), **arguments)
    assert torch.equal(mine, stock)


@pytest.mark.parametrize("family", ["sdxl", "sd3"])  # SD 1.x's stock clip_skip fails on transformers 5 (no text_model)
def test_clip_skip(request, family):
    mine, stock = both(pipe_of(request, family), clip_skip=1)
    assert torch.equal(mine, stock) and not torch.equal(mine, both(pipe_of(request, family))[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_one_generator_per_image_and_given_latents(request, family):
    pipe = pipe_of(request, family)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    mine = generate(pipe, PROMPTS, generator=gens(), output_type="latent", **KW).latents
    assert torch.equal(mine, pipe(PROMPTS, generator=gens(), output_type="latent", **KW).images)
    assert torch.equal(mine, generate(pipe, PROMPTS, seed=[3, 4], output_type="latent", **KW).latents)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    mine = generate(pipe, PROMPTS, latents=latents, output_type="latent", **KW).latents
    assert torch.equal(mine, pipe(PROMPTS, latents=latents, output_type="latent", **KW).images)


def test_one_seed_for_several_prompts_gives_distinct_images(tiny_sd_pipeline):
    r = generate(tiny_sd_pipeline, PROMPTS, seed=7, **KW)
    assert not torch.allclose(r.latents[0], r.latents[1])
    single = generate(tiny_sd_pipeline, PROMPTS[0], seed=7, **KW)  # the first image is the single call's
    assert torch.allclose(single.latents[0], r.latents[0], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_embeds(request, family):
    pipe = pipe_of(request, family)
    extra = {"prompt_2": None, "prompt_3": None} if family == "sd3" else {}
    encoded = pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, **extra
    )
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    embeds = dict(zip(names, encoded, strict=False))
    mine, stock = both(pipe, None, **embeds)
    assert torch.equal(mine, stock)
    assert torch.equal(mine, both(pipe)[0])  # the embeddings of the prompts give the prompts' images


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("output_type", ["np", "pt", "pil"])
def test_output_types(request, family, output_type):
    pipe = pipe_of(request, family)
    mine = generate(pipe, PROMPTS, seed=0, output_type=output_type, **KW).images
    stock = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type=output_type, **KW).images
    if output_type == "pil":
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(mine, stock, strict=True))
    elif output_type == "np":
        assert isinstance(mine, np.ndarray) and mine.shape == stock.shape and np.allclose(mine, stock, atol=1e-6)
    else:
        assert isinstance(mine, torch.Tensor) and torch.allclose(mine, stock, atol=1e-6)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_guidance_rescale_and_eta(request, family):
    pipe = pipe_of(request, family)
    mine, stock = both(pipe, guidance_rescale=0.7)
    assert torch.equal(mine, stock) and not torch.equal(mine, both(pipe)[0])
    ddim = pipe.scheduler
    try:
        pipe.scheduler = DDIMScheduler.from_config(ddim.config)
        mine, stock = both(pipe, eta=0.8)  # DDIM with eta > 0 draws step noise from the generator
        assert torch.equal(mine, stock) and not torch.equal(mine, both(pipe)[0])
    finally:
        pipe.scheduler = ddim


def test_tcd_passes_the_stock_eta():
    """The stock pipeline passes eta=0.0 to a scheduler that takes one; TCD's own default is 0.3."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*steps_offset", category=FutureWarning)
        pipe = StableDiffusionPipeline(
            **tiny_sd_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = TCDScheduler.from_config(pipe.scheduler.config)
    for eta in (None, 0.3):
        extra = {} if eta is None else {"eta": eta}
        mine, stock = both(pipe, **extra)
        assert torch.equal(mine, stock)


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_custom_timesteps_and_sigmas(request, family):
    pipe = pipe_of(request, family)
    if family == "sdxl":
        assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
        custom = {"timesteps": [999, 600, 200], "num_inference_steps": None}
    else:
        custom = {"sigmas": [1.0, 0.6, 0.3], "num_inference_steps": None}
    mine, stock = both(pipe, **custom)
    assert torch.equal(mine, stock)
    r = generate(pipe, PROMPTS[0], **{**KW, **custom})
    assert r.settings["num_inference_steps"] == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_callback_on_step_end_can_change_the_latents(request, family):
    pipe = pipe_of(request, family)
    seen = {"mine": [], "stock": []}

    def damp(who):
        def callback(pipeline, step, t, tensors):
            assert pipeline is pipe and set(tensors) == {"latents"}
            seen[who].append(step)
            return {"latents": tensors["latents"] * 0.9}

        return callback

    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    mine = generate(pipe, PROMPTS, generator=g(), output_type="latent", callback_on_step_end=damp("mine"), **KW)
    stock = pipe(PROMPTS, generator=g(), output_type="latent", callback_on_step_end=damp("stock"), **KW).images
    assert torch.equal(mine.latents, stock) and seen["mine"] == seen["stock"] == [0, 1, 2]
    with pytest.raises(ValueError, match="latentalign passes"):
        generate(pipe, PROMPTS, callback_on_step_end=damp("mine"), callback_on_step_end_tensor_inputs=["bogus"])


class GainProcessor(AttnProcessor2_0):
    """diffusers' attention, its output scaled by a `gain` read from cross_attention_kwargs."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, gain=1.0):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb) * gain


def test_cross_attention_kwargs_reach_the_attention_processors():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*steps_offset", category=FutureWarning)
        pipe = StableDiffusionPipeline(
            **tiny_sd_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.set_attn_processor(GainProcessor())
    mine, stock = both(pipe, cross_attention_kwargs={"gain": 0.5})
    assert torch.equal(mine, stock) and not torch.equal(mine, both(pipe)[0])


def test_defaults_come_from_the_pipeline_class(tiny_sd_pipeline, tiny_sdxl_pipeline, tiny_sd3_pipeline):
    """With no latentalign.json: the class's own __call__ defaults (SD 50 steps at 7.5, SDXL 5.0, SD3 28 at 7.0)."""
    expected = {"sd": (50, 7.5), "sdxl": (50, 5.0), "sd3": (28, 7.0)}
    for family, pipe in (("sd", tiny_sd_pipeline), ("sdxl", tiny_sdxl_pipeline), ("sd3", tiny_sd3_pipeline)):
        r = generate(pipe, "a red ball", output_type="latent")
        assert (r.settings["num_inference_steps"], r.settings["guidance_scale"]) == expected[family]


@pytest.mark.parametrize(
    "family, arguments, error, match",
    [
        (
            "sd3",
            {"guidance_rescale": 0.5},
            TypeError,
            "StableDiffusion3Pipeline's __call__ takes no 'guidance_rescale'",
        ),
        ("sd3", {"eta": 0.5}, TypeError, "takes no 'eta'"),
        ("sd", {"joint_attention_kwargs": {}}, TypeError, "takes no 'joint_attention_kwargs'"),
        ("sd", {"pooled_prompt_embeds": torch.zeros(1, 32)}, TypeError, "pooled_prompt_embeds"),
        ("sd", {"seed": 1, "generator": torch.Generator()}, ValueError, "not both"),
        ("sd", {"generator": [torch.Generator()]}, ValueError, "1 generators for 2 images"),
        ("sd", {"output_type": "jpeg"}, ValueError, "output_type"),
        ("sd", {"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
        ("sd", {"height": 15}, ValueError, "height must be a positive multiple of 2"),
        ("sd", {"timesteps": [900, 500]}, ValueError, "custom timestep"),
        ("sd", {"eta": float("nan")}, ValueError, "eta"),
        ("sd", {"latents": torch.zeros(1, 4, 8, 8)}, ValueError, "latents must have shape"),
        ("sd", {"prompt_embeds": torch.zeros(2, 77, 32)}, ValueError, "prompt= or prompt_embeds="),
    ],
)
def test_arguments_that_do_not_apply_are_refused_before_work(request, monkeypatch, family, arguments, error, match):
    pipe = pipe_of(request, family)
    model = pipe.transformer if family == "sd3" else pipe.unet

    def boom(*args, **kwargs):
        raise AssertionError("the denoiser ran before the arguments were checked")

    monkeypatch.setattr(model, "forward", boom)
    with pytest.raises(error, match=match):
        generate(pipe, PROMPTS, **{**KW, **arguments})


def test_float16_equals_the_stock_pipeline(tiny_sd_pipeline, tiny_sdxl_pipeline):
    """In float16 the stock SD pipeline decodes in the VAE's dtype, SDXL's upcasts a force_upcast VAE: so does
    latentalign (images compared, not just latents)."""
    import copy

    for pipe in (
        copy.deepcopy(tiny_sd_pipeline).to(torch.float16),
        copy.deepcopy(tiny_sdxl_pipeline).to(torch.float16),
    ):
        mine = generate(pipe, PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt", **KW).images
        stock = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt", **KW).images
        assert mine.dtype == stock.dtype and torch.equal(mine, stock)


def test_unsupported_stock_arguments_and_missing_pooled_embeddings_are_named(tiny_sdxl_pipeline):
    with pytest.raises(TypeError, match="does not take StableDiffusionXLPipeline's 'original_size'"):
        generate(tiny_sdxl_pipeline, PROMPTS, original_size=(16, 16), **KW)
    embeds = torch.zeros(2, 77, 64)
    with pytest.raises(ValueError, match="need pooled_prompt_embeds"):
        generate(tiny_sdxl_pipeline, None, prompt_embeds=embeds, **KW)


def _identity_stages(pipe):
    """A stage at every place that changes nothing: untrained projector, zero-step refinement, Best-of-1."""
    from conftest import TINY_WORDS  # noqa: F401  (the prompts' words are the tiny tokenizer's)

    from latentalign.adapters import Denoiser
    from latentalign.methods import AttentionRefinement, BestOfN, NoiseProjection, NoiseProjector, NoiseProjectorConfig
    from latentalign.scorers import build_shapes_scorer

    den = Denoiser(pipe)
    projector = NoiseProjector(NoiseProjectorConfig(latent_channels=4, text_dim=den.text_dim, width=16)).eval()
    return [
        NoiseProjection(projector=projector),
        AttentionRefinement(words=("a",), step_size=0.0, max_refine_iterations=0),
        BestOfN(n=1, scorer=build_shapes_scorer("latent", pipe.vae.config.scaling_factor)),
    ]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "arguments",
    [{}, {"num_images_per_prompt": 2}, {"negative_prompt": ["a dog", "a cat"]}, {"height": 32, "width": 24}],
    ids=["one-generator", "images-per-prompt", "negative-prompt", "size"],
)
def test_methods_take_the_stock_arguments_too(request, family, arguments):
    """Every place of the run honours the stock arguments: identity stages at all three places give the stock
    pipeline's latents for them."""
    pipe = pipe_of(request, family)
    kwargs = {**KW, **arguments}
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    stages = _identity_stages(pipe)
    if "height" in arguments:  # the tiny latent scorer reads 8x8 latents only, and says so before any work
        stages = stages[:2]
    mine = generate(pipe, PROMPTS, method=stages, generator=g(), output_type="latent", **kwargs)
    stock = pipe(PROMPTS, generator=g(), output_type="latent", **kwargs).images
    torch.testing.assert_close(mine.latents, stock, rtol=1e-5, atol=1e-5)
