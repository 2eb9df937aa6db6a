"""Flux and PixArt through the one adapter layer: plain generation equal to the stock pipelines (default
schedulers, two image sizes), their own call arguments, attention maps over T5's tokens, ReNO on a one-step
Flux-schnell-style configuration. Every registered method runs on both in tests/test_method_contract.py."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_flux, tiny_pixart
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from latentalign import generate
from latentalign.adapters import Denoiser, FluxDenoiser, PixArtDenoiser
from latentalign.attention_losses import token_groups
from latentalign.methods import AttentionRefinement, NoiseOptimization, Reward
from latentalign.scorers import build_shapes_scorer

SIZES = [(16, 16), (16, 32)]
STEPS = 3


def stock_and_ours(pipe, prompt="a red ball on grass", seed=3, **kw):
    stock = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="pt", **kw).images
    ours = generate(pipe, prompt, seed=seed, output_type="pt", **kw)
    return stock, ours


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("guidance_embeds", [False, True], ids=["schnell", "dev"])
def test_flux_plain_generation_equals_the_stock_pipeline(size, guidance_embeds):
    pipe = tiny_flux(guidance_embeds)
    height, width = size
    stock, ours = stock_and_ours(pipe, height=height, width=width, num_inference_steps=STEPS, guidance_scale=4.0)
    assert torch.equal(ours.images, stock)
    assert ours.latents.shape == (1, 4, height // 2, width // 2)  # spatial latents (the stock "latent" is packed)
    assert ours.cost.denoiser_evals == STEPS  # the guidance embedding, not classifier-free guidance
    packed = pipe(
        "a red ball on grass",
        height=height,
        width=width,
        num_inference_steps=STEPS,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).images
    assert torch.equal(FluxDenoiser(pipe, height=height, width=width).pack(ours.latents), packed)


@pytest.mark.parametrize(
    "arguments",
    [{}, {"num_images_per_prompt": 2}, {"height": 32, "width": 16}, {"guidance_scale": 1.0}],
    ids=["one-generator", "images-per-prompt", "size", "unguided"],
)
@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_the_call_surface_equals_the_stock_pipeline(request, family, arguments):
    pipe = request.getfixturevalue(f"tiny_{family}_pipeline")
    kw = {"num_inference_steps": 2, "output_type": "pt", **arguments}
    if family == "pixart":
        kw["use_resolution_binning"] = False
    prompts = ["a red ball on grass", "a painting of a blue dog"]
    mine = generate(pipe, prompts, generator=torch.Generator().manual_seed(7), **kw).images
    stock = pipe(prompts, generator=torch.Generator().manual_seed(7), **kw).images
    assert torch.equal(mine, stock)


def test_flux_true_cfg_with_a_negative_prompt_equals_the_stock_pipeline(tiny_flux_dev_pipeline):
    kw = dict(negative_prompt="a dog", true_cfg_scale=2.5, num_inference_steps=STEPS, max_sequence_length=32)
    stock, ours = stock_and_ours(tiny_flux_dev_pipeline, **kw)
    assert torch.equal(ours.images, stock)
    assert ours.cost.denoiser_evals == 2 * STEPS
    assert ours.settings["true_cfg_scale"] == 2.5 and ours.settings["max_sequence_length"] == 32


def test_flux_schedule_is_shifted_by_the_image_size(tiny_flux_pipeline):
    """`mu` grows with the packed sequence: a larger image spends more of the schedule at high noise."""
    small = Denoiser(tiny_flux_pipeline, height=16, width=16).new_scheduler(STEPS).sigmas
    large = Denoiser(tiny_flux_pipeline, height=32, width=32).new_scheduler(STEPS).sigmas
    assert small[0] == large[0] == 1 and (large[1:-1] > small[1:-1]).all()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scheduler", [DPMSolverMultistepScheduler, DDIMScheduler])
@pytest.mark.parametrize("kind", ["alpha", "sigma"])
def test_pixart_plain_generation_equals_the_stock_pipeline(kind, scheduler, size):
    pipe = tiny_pixart(kind, scheduler())
    height, width = size
    kw = dict(height=height, width=width, num_inference_steps=STEPS, use_resolution_binning=False)
    stock, ours = stock_and_ours(pipe, **kw)
    assert torch.equal(ours.images, stock)
    assert ours.cost.denoiser_evals == 2 * STEPS  # guided at the stock 4.5
    assert ours.settings["guidance_scale"] == 4.5


def test_pixart_refuses_binning_it_has_no_bins_for_before_any_work(tiny_pixart_pipeline, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the denoiser ran before the input was checked")

    monkeypatch.setattr(tiny_pixart_pipeline.transformer, "forward", boom)
    with pytest.raises(ValueError, match="use_resolution_binning=False"):
        generate(tiny_pixart_pipeline, "a red ball", num_inference_steps=STEPS)  # the stock default binning
    with pytest.raises(ValueError, match="one-step"):
        generate(tiny_pixart_pipeline, "a red ball", num_inference_steps=1, use_resolution_binning=False)
    with pytest.raises(TypeError, match="true_cfg_scale"):  # Flux's argument, not PixArt's
        generate(tiny_pixart_pipeline, "a red ball", true_cfg_scale=2.0, use_resolution_binning=False)


def test_pixart_binning_generates_at_the_bin_and_returns_the_requested_size(tiny_pixart_pipeline, monkeypatch):
    import latentalign.adapters as adapters

    monkeypatch.setattr(adapters, "_pixart_bins", lambda pipe: {8: {"0.5": [16.0, 32.0], "1.0": [16.0, 16.0]}})
    den = PixArtDenoiser(tiny_pixart_pipeline, height=20, width=36)
    assert den.latent_size == (8, 16) and den.image_size == (20, 36)  # the 0.5 bin, resized back after decoding
    r = generate(tiny_pixart_pipeline, "a red ball", height=20, width=36, num_inference_steps=2, output_type="pt")
    assert r.images.shape == (1, 3, 20, 36) and r.latents.shape == (1, 4, 8, 16)
    assert r.images.min() >= 0 and r.images.max() <= 1


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_t5_token_selection_groups_and_repeats(request, family):
    pipe = request.getfixturevalue(f"tiny_{family}_pipeline")
    den = Denoiser(pipe, **({"options": {"use_resolution_binning": False}} if family == "pixart" else {}))
    tok = den.attention_tokenizer
    assert tok.bos_token_id is None  # T5: the first word is position 0
    assert token_groups(tok, "a red ball on grass", ["ball"]).subjects == ((2,),)
    assert token_groups(tok, "a ball and a ball", ["ball"]).subjects == ((1,), (4,))  # every occurrence
    # a word the vocabulary splits ("balls" -> "▁ball" + "s") is one group of all its pieces
    two, balls = (len(tok(w, add_special_tokens=False).input_ids) for w in ("two", "balls"))
    assert balls > 1 and token_groups(tok, "two balls", ["balls"]).subjects == (tuple(range(two, two + balls)),)
    with pytest.raises(ValueError, match="not a word of the prompt"):
        token_groups(tok, "a red ball", ["cat"])


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_attention_maps_read_the_text_tokens_and_processors_come_back(request, family):
    pipe = request.getfixturevalue(f"tiny_{family}_pipeline")
    options = {"use_resolution_binning": False} if family == "pixart" else {}
    den = Denoiser(pipe, options=options)
    before = {n: id(p) for n, p in den.core.attn_processors.items()}
    cond = den.encode(["a red ball"], 1.0)
    z = den.draw(torch.Generator().manual_seed(0), 1)
    (size,) = den.cross_attention_resolutions()
    maps = den.cross_attention(z, den.new_scheduler(STEPS).timesteps[0], cond, size)
    assert maps.shape == (1, size * size, cond.prompt_embeds.shape[1])
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, size * size))
    assert {n: id(p) for n, p in den.core.attn_processors.items()} == before


def test_attention_refinement_moves_flux_latents_and_zero_step_is_plain(tiny_flux_pipeline):
    kw = dict(num_inference_steps=STEPS, seed=1)
    prompt = "a red ball on grass"
    plain = generate(tiny_flux_pipeline, prompt, **kw)
    still = generate(tiny_flux_pipeline, prompt, method=AttentionRefinement(words=("ball",), step_size=0.0), **kw)
    assert torch.equal(still.latents, plain.latents)
    method = AttentionRefinement(words=("ball",), step_size=50.0, max_refine_iterations=1)
    refined = generate(tiny_flux_pipeline, prompt, method=method, **kw)
    assert not torch.equal(refined.latents, plain.latents)
    assert refined.settings["subject_tokens"] == [[2]]  # "ball" among T5's tokens, no start token before it


def test_reno_on_a_one_step_flux_schnell_configuration(tiny_flux_pipeline):
    scorer = build_shapes_scorer("latent", tiny_flux_pipeline.vae.config.scaling_factor)
    method = NoiseOptimization(iterations=3, rewards=[Reward(scorer)], lr=5.0)
    r = generate(tiny_flux_pipeline, "a red ball on grass", method=method, num_inference_steps=1, seed=0)
    plain = generate(tiny_flux_pipeline, "a red ball on grass", num_inference_steps=1, seed=0)
    assert torch.isfinite(r.latents).all() and not torch.equal(r.latents, plain.latents)
    assert r.cost.denoiser_evals >= 4  # three optimised passes and the final one


def test_load_pipeline_refuses_offloading_it_cannot_do(tiny_shapes_path):
    from latentalign import load_pipeline

    with pytest.raises(ValueError, match="'model' or 'sequential'"):
        load_pipeline(str(tiny_shapes_path), offload="gpu")
    with pytest.raises(ValueError, match="not both"):
        load_pipeline(str(tiny_shapes_path), offload="model", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            load_pipeline(str(tiny_shapes_path), offload="model")


def test_family_inputs_are_checked_before_any_work(tiny_flux_pipeline, tiny_pixart_pipeline, monkeypatch):
    for pipe in (tiny_flux_pipeline, tiny_pixart_pipeline):
        monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: pytest.fail("the denoiser ran"))
    with pytest.raises(ValueError, match="at most 512"):  # the stock check_inputs' bound
        generate(tiny_flux_pipeline, "a red ball", max_sequence_length=600)
    embeds = torch.zeros(1, 8, 32)
    with pytest.raises(ValueError, match="prompt_attention_mask"):
        generate(tiny_pixart_pipeline, prompt_embeds=embeds, use_resolution_binning=False)
    with pytest.raises(ValueError, match="positive integer"):
        generate(tiny_pixart_pipeline, "a red ball", height=0)


def test_flux_given_embeddings_and_one_negative_serve_every_image(tiny_flux_dev_pipeline):
    pipe, kw = tiny_flux_dev_pipeline, dict(num_inference_steps=2, max_sequence_length=16)
    den = Denoiser(pipe, options={"max_sequence_length": 16})
    cond = den.encode(["a red ball"], 1.0)
    r = generate(
        pipe,
        prompt_embeds=cond.prompt_embeds,
        pooled_prompt_embeds=cond.added["pooled_projections"],
        num_images_per_prompt=2,
        seed=[0, 1],
        **kw,
    )
    again = generate(pipe, "a red ball", num_images_per_prompt=2, seed=[0, 1], **kw)
    torch.testing.assert_close(r.latents, again.latents, rtol=1e-5, atol=1e-5)  # embeddings encoded apart
    two = generate(pipe, ["a red ball", "a blue dog"], negative_prompt="grass", true_cfg_scale=2.0, **kw)
    assert two.latents.shape[0] == 2 and two.cost.denoiser_evals == 2 * 2 * 2


def test_pixart_subject_words_are_read_as_its_text_encoder_reads_them(tiny_pixart_pipeline):
    method = AttentionRefinement(words=("Ball",), max_refine_iterations=0)
    r = generate(
        tiny_pixart_pipeline, "A Red Ball on grass", method=method, num_inference_steps=2, use_resolution_binning=False
    )
    assert r.settings["subject_tokens"] == [[2]]  # lowercased as PixArt's _text_preprocessing does
