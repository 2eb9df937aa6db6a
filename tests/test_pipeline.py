"""The adapter, the shared loop and plain generation, on tiny random-weight pipelines."""

from __future__ import annotations

import copy
import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_UNET, tiny_sd_components
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)

from latentalign import Cost, generate, load_pipeline
from latentalign.adapters import Conditioning, Denoiser, decode_latents
from latentalign.methods import EarlyExit
from latentalign.scorers import build_shapes_scorer
from latentalign.world import PromptError

STEPS, GUIDANCE = 3, 2.0


class WorkStarted(Exception):
    """Raised by a patched forward: a check that should come first let the work begin."""


def forbid_work(monkeypatch, pipe) -> None:
    """Make any text-encoder, denoiser or VAE call fail loudly (and not as a ValueError)."""

    def boom(*args, **kwargs):
        raise WorkStarted

    for module in (pipe.text_encoder, pipe.unet, pipe.vae):
        monkeypatch.setattr(module, "forward", boom)
    monkeypatch.setattr(pipe.vae, "decode", boom)


def run(pipe, prompt="a red ball", **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("guidance_scale", GUIDANCE)
    return generate(pipe, prompt, **kwargs)


# Adapter


@pytest.mark.parametrize("guidance", [1.0, GUIDANCE])
def test_x0_prediction_matches_epsilon_formula(tiny_sd_pipeline, guidance):
    den = Denoiser(tiny_sd_pipeline)
    assert den.prediction_type == "epsilon"
    cond = den.encode(["a red ball on grass"], guidance)
    scheduler = den.new_scheduler(STEPS)
    latents = torch.randn((1, *den.latent_shape), generator=torch.Generator().manual_seed(0))
    alphas = tiny_sd_pipeline.scheduler.alphas_cumprod
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps, x0 = den.denoise(latents, t, cond)
            a = alphas[int(t)]
            assert torch.allclose(x0, (latents - (1 - a).sqrt() * eps) / a.sqrt(), atol=1e-5)
            # DDIM's own x0 estimate is the same quantity.
            ddim = scheduler.step(eps, t, latents)
            assert torch.allclose(x0, ddim.pred_original_sample, atol=1e-4)
            latents = ddim.prev_sample


def test_denoiser_rejects_unets_it_cannot_condition(tiny_sd_pipeline):
    def fake(**unet_options):
        unet = UNet2DConditionModel(**TINY_UNET, **unet_options)
        return SimpleNamespace(unet=unet, vae=tiny_sd_pipeline.vae, scheduler=tiny_sd_pipeline.scheduler)

    sdxl = {"addition_embed_type": "text_time", "addition_time_embed_dim": 8}
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline"):  # an SDXL UNet in a pipeline without time ids
        Denoiser(fake(**sdxl, projection_class_embeddings_input_dim=80))
    with pytest.raises(ValueError, match="'text'"):
        Denoiser(fake(addition_embed_type="text", encoder_hid_dim=32))
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        Denoiser(fake(time_cond_proj_dim=8))


def test_denoiser_rejects_pipelines_without_a_unet(tiny_sd_pipeline):
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        Denoiser(SimpleNamespace(transformer=torch.nn.Linear(2, 2), scheduler=tiny_sd_pipeline.scheduler))


def test_new_scheduler_matches_the_pipelines(tiny_sd_pipeline):
    den = Denoiser(tiny_sd_pipeline)
    scheduler = den.new_scheduler(STEPS)
    assert scheduler is not tiny_sd_pipeline.scheduler
    tiny_sd_pipeline.scheduler.set_timesteps(STEPS)
    assert torch.equal(scheduler.timesteps, tiny_sd_pipeline.scheduler.timesteps)


# Generation


def test_generate_is_deterministic(tiny_sd_pipeline):
    a, b = run(tiny_sd_pipeline, seed=3), run(tiny_sd_pipeline, seed=3)
    assert torch.equal(a.latents, b.latents)
    assert [im.tobytes() for im in a.images] == [im.tobytes() for im in b.images]
    assert not torch.allclose(a.latents, run(tiny_sd_pipeline, seed=4).latents)


def test_generate_returns_images_and_settings(tiny_sd_pipeline):
    result = run(tiny_sd_pipeline, ["a red ball", "a blue cat"], seed=[0, 1])
    assert result.latents.shape == (2, 4, 8, 8)
    assert len(result.images) == 2 and result.images[0].size == (16, 16) and result.images[0].mode == "RGB"
    assert result.prompts == ["a red ball", "a blue cat"] and result.seeds == [0, 1]
    assert result.settings.items() >= {"num_inference_steps": STEPS, "guidance_scale": GUIDANCE}.items()
    assert result.settings["height"] == result.settings["width"] == 16 and result.settings["method"] == "plain"


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
@pytest.mark.parametrize("guidance", [1.0, GUIDANCE])
def test_batched_equals_single(request, family, guidance):
    pipe = request.getfixturevalue(f"tiny_{family}_pipeline")
    prompts = ["a red ball on grass", "a painting of a dog"]
    batched = run(pipe, prompts, seed=[0, 1], guidance_scale=guidance)
    singles = [run(pipe, p, seed=s, guidance_scale=guidance) for p, s in zip(prompts, [0, 1], strict=True)]
    assert torch.allclose(batched.latents, torch.cat([r.latents for r in singles]), atol=1e-4)


@pytest.mark.parametrize("guidance", [1.0, GUIDANCE])
def test_shared_loop_equals_the_stock_pipeline(tiny_sd_pipeline, guidance):
    prompt, seed = "a photo of a cat", 5
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    stock = tiny_sd_pipeline(
        prompt, latents=latents, num_inference_steps=STEPS, guidance_scale=guidance, output_type="latent"
    ).images
    ours = run(tiny_sd_pipeline, prompt, seed=seed, guidance_scale=guidance).latents
    assert torch.allclose(stock, ours, atol=1e-5)


def test_callback_sees_every_step(tiny_sd_pipeline):
    calls = []
    result = run(tiny_sd_pipeline, ["a red ball", "a blue dog"], seed=[0, 1], callback=calls.append)
    assert [c["step"] for c in calls] == list(range(STEPS))
    assert len({int(c["t"]) for c in calls}) == STEPS
    for c in calls:
        assert c["x0"].shape == c["latents"].shape == result.latents.shape
        assert c["model_output"].shape == result.latents.shape
        assert torch.isfinite(c["x0"]).all()


@pytest.mark.parametrize("guidance, per_step", [(1.0, 1), (0.0, 1), (GUIDANCE, 2)])
@pytest.mark.parametrize("batch", [1, 3])
def test_cost_counts(tiny_sd_pipeline, guidance, per_step, batch):
    result = run(tiny_sd_pipeline, ["a red ball"] * batch, seed=list(range(batch)), guidance_scale=guidance)
    assert isinstance(result.cost, Cost)
    assert result.cost.denoiser_evals == per_step * STEPS * batch
    assert result.cost.vae_decodes == batch
    assert result.cost.vae_encodes == 0
    assert result.cost.seconds > 0


@pytest.mark.parametrize(
    "prompt, kwargs",
    [
        ("", {}),
        ("   ", {}),
        ([], {}),
        (["a cat", ""], {"seed": [0, 1]}),
        ("a cat", {"num_inference_steps": 0}),
        ("a cat", {"num_inference_steps": -1}),
        ("a cat", {"num_inference_steps": 2.5}),
        ("a cat", {"seed": -1}),
        ("a cat", {"seed": True}),
        (["a cat", "a dog"], {"seed": [0]}),
        (["a cat", "a dog"], {"seed": [0, 1, 2]}),
        ("a cat", {"guidance_scale": -1.0}),
        (["a cat", "a dog"], {"seed": [0, 1], "negative_prompt": ["blurry"]}),
    ],
)
def test_bad_input_fails_before_any_work(tiny_sd_pipeline, monkeypatch, prompt, kwargs):
    forbid_work(monkeypatch, tiny_sd_pipeline)
    with pytest.raises(ValueError):
        run(tiny_sd_pipeline, prompt, **kwargs)


def test_in_memory_pipeline_ignores_the_working_directory(tiny_sd_pipeline, tmp_path, monkeypatch):
    (tmp_path / "latentalign.json").write_text(json.dumps({"num_inference_steps": 1, "world": "shapes"}))
    monkeypatch.chdir(tmp_path)
    result = generate(tiny_sd_pipeline, "a photo of a cat", guidance_scale=1.0, num_inference_steps=None)
    assert result.settings["num_inference_steps"] == 50  # diffusers' default, not the stray file's


# Loading


def test_load_pipeline_missing_path():
    with pytest.raises(FileNotFoundError):
        load_pipeline("./does/not/exist")


def test_load_pipeline_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(str(tmp_path))


# The Shapes pipeline


def test_shapes_pipeline_uses_its_defaults(tiny_shapes_pipeline):
    calls = []
    result = generate(tiny_shapes_pipeline, "a red circle", callback=calls.append)
    assert result.settings.items() >= {"num_inference_steps": 3, "guidance_scale": 2.0}.items()
    assert len(calls) == 3
    assert result.cost.denoiser_evals == 2 * 3
    assert result.images[0].size == (32, 32)


@pytest.mark.parametrize("prompt", ["a purple circle", "two red circle", ["a red circle", "a red hexagon"]])
def test_shapes_rejects_unknown_words_before_any_work(tiny_shapes_pipeline, monkeypatch, prompt):
    forbid_work(monkeypatch, tiny_shapes_pipeline)
    calls = []
    seeds = list(range(len(prompt))) if isinstance(prompt, list) else 0
    with pytest.raises(PromptError):
        generate(tiny_shapes_pipeline, prompt, seed=seeds, callback=calls.append)
    assert not calls


def test_shapes_save_load_round_trip(tiny_shapes_pipeline, tmp_path):
    tiny_shapes_pipeline.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    kwargs = dict(seed=[0, 1], num_inference_steps=3, guidance_scale=2.0)
    a = generate(tiny_shapes_pipeline, ["a red circle", "two blue squares"], **kwargs)
    b = generate(reloaded, ["a red circle", "two blue squares"], **kwargs)
    assert torch.equal(a.latents, b.latents)
    assert [im.tobytes() for im in a.images] == [im.tobytes() for im in b.images]


# SDXL: two text encoders, pooled + time-id added conditioning, an Euler (sigma-space) scheduler


@pytest.mark.parametrize("guidance", [1.0, GUIDANCE])
def test_sdxl_shared_loop_equals_the_stock_pipeline(tiny_sdxl_pipeline, guidance):
    prompt, seed = "a photo of a cat", 5
    # The stock pipeline last ran with another step count: its scheduler's init_noise_sigma must not leak into ours.
    tiny_sdxl_pipeline("a dog", num_inference_steps=STEPS + 2, guidance_scale=guidance, output_type="latent")
    ours = run(tiny_sdxl_pipeline, prompt, seed=seed, guidance_scale=guidance).latents
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    stock = tiny_sdxl_pipeline(
        prompt, latents=latents, num_inference_steps=STEPS, guidance_scale=guidance, output_type="latent"
    ).images
    assert torch.allclose(stock, ours, atol=1e-5)


def test_sdxl_conditioning_carries_pooled_embeddings_and_time_ids(tiny_sdxl_pipeline):
    den = Denoiser(tiny_sdxl_pipeline)
    cond = den.encode(["a red ball", "a blue cat"], GUIDANCE)
    assert cond.added["text_embeds"].shape == cond.negative_added["text_embeds"].shape == (2, 32)
    # original size, crop corner, target size: the 16x16 images the pipeline draws by default
    assert cond.added["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    one = cond.select([1])
    assert torch.equal(one.added["text_embeds"][0], cond.added["text_embeds"][1])
    assert torch.equal(one.prompt_embeds[0], cond.prompt_embeds[1])
    # the pooled text embedding reaches the UNet: another prompt's pooled rows change its output
    z = den.initial_noise([0, 0])
    t = den.new_scheduler(STEPS).timesteps[0]
    swapped = Conditioning(
        cond.prompt_embeds, None, 1.0, {**cond.added, "text_embeds": cond.added["text_embeds"].flip(0)}
    )
    with torch.no_grad():
        plain = den.denoise(z, t, Conditioning(cond.prompt_embeds, None, 1.0, cond.added))[0]
        assert not torch.allclose(plain, den.denoise(z, t, swapped)[0])


def test_sdxl_x0_is_the_euler_schedulers_own_estimate(tiny_sdxl_pipeline):
    calls = []
    run(tiny_sdxl_pipeline, "a red ball", seed=1, callback=calls.append)
    den = Denoiser(tiny_sdxl_pipeline)
    scheduler = den.new_scheduler(STEPS)
    for c in calls:
        ref = scheduler.step(c["model_output"], c["t"], c["latents"]).pred_original_sample
        assert torch.allclose(c["x0"], ref, atol=1e-4)


# Schedulers with state (multistep history) or step noise: one scheduler per row


def _sd_with(scheduler_cls) -> StableDiffusionPipeline:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*steps_offset", category=FutureWarning)
        pipe = StableDiffusionPipeline(
            **tiny_sd_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler_cls", [EulerAncestralDiscreteScheduler, DDPMScheduler])
def test_stochastic_schedulers_are_seeded_per_image(scheduler_cls):
    pipe = _sd_with(scheduler_cls)
    prompts, seeds = ["a red ball on grass", "a painting of a dog"], [0, 1]
    batched = run(pipe, prompts, seed=seeds)
    assert torch.equal(batched.latents, run(pipe, prompts, seed=seeds).latents)
    singles = torch.cat([run(pipe, p, seed=s).latents for p, s in zip(prompts, seeds, strict=True)])
    assert torch.allclose(batched.latents, singles, atol=1e-4)
    # diffusers with one generator per image draws the same initial and step noise
    stock = pipe(
        prompts,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        output_type="latent",
    ).images
    assert torch.allclose(stock, batched.latents, atol=1e-4)


@pytest.mark.parametrize(
    "scheduler_cls",
    [PNDMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerAncestralDiscreteScheduler],
)
@pytest.mark.parametrize("max_batch", [1, 64])
def test_pruned_best_of_n_keeps_each_candidates_scheduler_state(scheduler_cls, max_batch):
    """Stages of Best-of-N continue each survivor's own scheduler: the winner is its seed's plain image even for
    multistep schedulers (history) and stochastic ones (step noise)."""
    pipe = _sd_with(scheduler_cls)
    scorer = build_shapes_scorer("latent", pipe.vae.config.scaling_factor)
    kw = {"num_inference_steps": 6, "guidance_scale": GUIDANCE}
    stage = EarlyExit(scorer=scorer, n=3, prune_steps=(2, 4), keep=(2, 1), max_batch=max_batch)
    r = generate(pipe, "a red ball", method=stage, seed=0, **kw)
    winner = generate(pipe, "a red ball", seed=r.candidate_seeds[0][r.chosen[0]], **kw)
    assert torch.allclose(winner.latents, r.latents, atol=1e-4)


# SD3: an MMDiT transformer predicting flow-matching velocity, pooled projections, shifted VAE latents


@pytest.mark.parametrize("guidance", [1.0, GUIDANCE])
def test_sd3_shared_loop_equals_the_stock_pipeline(tiny_sd3_pipeline, guidance):
    prompt, seed = "a photo of a cat", 5
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    kw = {"num_inference_steps": STEPS, "guidance_scale": guidance}
    stock = tiny_sd3_pipeline(prompt, latents=latents, output_type="pt", **kw).images
    ours = run(tiny_sd3_pipeline, prompt, seed=seed, guidance_scale=guidance)
    assert torch.allclose(tiny_sd3_pipeline(prompt, latents=latents, output_type="latent", **kw).images, ours.latents)
    # decoding applies SD3's shift factor as the stock pipeline does
    pixels = torch.from_numpy(np.asarray(ours.images[0])).permute(2, 0, 1).float() / 255
    assert (pixels - stock[0]).abs().max() <= 1 / 255 + 1e-6
    assert ours.cost.denoiser_evals == STEPS * (2 if guidance > 1 else 1)


def test_sd3_x0_is_the_flow_matching_estimate(tiny_sd3_pipeline):
    calls = []
    result = run(tiny_sd3_pipeline, "a red ball", seed=1, callback=calls.append)
    for c in calls:
        sigma = c["t"] / 1000  # FlowMatchEulerDiscreteScheduler: t = 1000 sigma
        assert torch.allclose(c["x0"], c["latents"] - sigma * c["model_output"], atol=1e-6)
    # the last Euler step goes to sigma = 0: it lands on that step's x0 prediction
    assert torch.allclose(calls[-1]["x0"], result.latents, atol=1e-5)


def test_sd3_pixel_scorer_and_encoder_use_the_shift_factor(tiny_sd3_pipeline):
    den = Denoiser(tiny_sd3_pipeline)
    latents = run(tiny_sd3_pipeline, "a red ball", seed=2).latents
    scorer = build_shapes_scorer("pixel", tiny_sd3_pipeline.vae.config.scaling_factor, vae=tiny_sd3_pipeline.vae)
    assert torch.allclose(scorer.decode(latents), den.decode(latents))
    # encode_images and decode undo each other's shift and scale: together they are the VAE's own round trip
    vae, images = tiny_sd3_pipeline.vae, torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = (vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
        assert torch.allclose(den.decode(den.encode_images(images)), ref, atol=1e-5)


def test_sd3_rejects_schedulers_it_cannot_read(tiny_sd3_pipeline):
    fake = SimpleNamespace(transformer=tiny_sd3_pipeline.transformer, vae=tiny_sd3_pipeline.vae, scheduler=None)
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler"):
        Denoiser(fake)
    fake.scheduler = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    with pytest.raises(ValueError, match="stochastic"):
        Denoiser(fake)


def test_sd3_dynamic_shifting_schedule_equals_the_stock_pipelines(tiny_sd3_pipeline):
    """SD3.5-style dynamic shifting: `mu` from the image's token count, as the stock pipeline computes it."""
    pipe = StableDiffusion3Pipeline(
        **{
            **tiny_sd3_pipeline.components,
            "scheduler": FlowMatchEulerDiscreteScheduler(
                use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64
            ),
        }
    )
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    kw = {"num_inference_steps": STEPS, "guidance_scale": 1.0}
    stock = pipe("a cat", latents=latents, output_type="latent", **kw).images
    assert torch.allclose(run(pipe, "a cat", seed=3, guidance_scale=1.0).latents, stock)


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_sdxl_and_sd3_folders_load_and_generate_the_same(request, family, tmp_path):
    pipe = request.getfixturevalue(f"tiny_{family}_pipeline")
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    without_t5 = {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {}  # as diffusers loads it
    loaded = load_pipeline(str(tmp_path), **without_t5)
    assert type(loaded) is type(pipe)
    assert torch.allclose(run(loaded, "a red ball", seed=4).latents, run(pipe, "a red ball", seed=4).latents)


def test_half_precision_vae_that_asks_for_it_decodes_in_float32(tiny_sdxl_pipeline):
    vae = copy.deepcopy(tiny_sdxl_pipeline.vae)
    latents = torch.randn(1, 4, 8, 8) * 0.5
    with torch.no_grad():
        reference = decode_latents(vae, latents)
        vae.to(torch.float16)
        assert vae.config.force_upcast
        seen = []
        vae.decoder.register_forward_hook(lambda module, args, out: seen.append(args[0].dtype))
        half = decode_latents(vae, latents.half())
    assert seen == [torch.float32]  # the decoder ran in float32
    assert vae.dtype == torch.float16 and half.dtype == torch.float32  # cast back; images float32, as stock SDXL's
    assert torch.allclose(half.float(), reference, atol=2e-3)
