"""Noise optimisation (ReNO) on tiny components: zero learning rate is the baseline, the regulariser stays
finite, a one-step pipeline works, non-finite gradients never reach the noise, bad options fail first."""

from __future__ import annotations

import pytest
import torch

from latentalign import generate
from latentalign.methods import (
    NoiseOptimization,
    Reward,
    chi_regulariser,
    recommended_iterations,
    recommended_steps,
)
from latentalign.scorers import LatentCLIPScorer, build_shapes_scorer


def reno(pipe, prompt, *, rewards, steps, seed=0, guidance_scale=None, **options):
    """ReNO with explicit rewards through a `steps`-step generator."""
    stage = NoiseOptimization(rewards=rewards, **options)
    return generate(pipe, prompt, method=stage, seed=seed, num_inference_steps=steps, guidance_scale=guidance_scale)


@pytest.fixture(scope="module")
def latent_scorer(tiny_shapes_pipeline):
    return build_shapes_scorer("latent", tiny_shapes_pipeline.vae.config.scaling_factor)


@pytest.fixture(scope="module")
def pixel_scorer(tiny_shapes_pipeline):
    vae = tiny_shapes_pipeline.vae
    return build_shapes_scorer("pixel", vae.config.scaling_factor, vae=vae)


def test_zero_learning_rate_returns_the_baseline(tiny_shapes_pipeline, latent_scorer):
    r = reno(
        tiny_shapes_pipeline, "a red circle", rewards=[Reward(latent_scorer)], seed=5, steps=2, iterations=3, lr=0.0
    )
    plain = generate(tiny_shapes_pipeline, "a red circle", seed=5, num_inference_steps=2)
    assert torch.allclose(r.latents, plain.latents, rtol=1e-5, atol=1e-5)
    assert r.best_iteration == [0] and len(r.rewards[0]) == 4 and len(set(r.rewards[0])) == 1


def test_optimisation_moves_the_noise_and_keeps_the_best_iterate(tiny_shapes_pipeline, latent_scorer, pixel_scorer):
    rewards = [Reward(latent_scorer), Reward(pixel_scorer, 0.5), Reward(latent_scorer, 1.0, "a blue square", True)]
    flags = [p.requires_grad for s in (latent_scorer, pixel_scorer) for p in s.parameters()]
    r = reno(tiny_shapes_pipeline, "a red circle", rewards=rewards, seed=0, steps=2, iterations=4, lr=5.0)
    history = r.rewards[0]
    assert len(set(history)) > 1  # the noise moved
    assert flags == [p.requires_grad for s in (latent_scorer, pixel_scorer) for p in s.parameters()]  # restored
    assert any(flags)  # (some were on: the restore is seen)
    assert history[r.best_iteration[0]] == max(history)
    assert r.cost.denoiser_evals == 5 * 2 * 2  # iterates x steps x (guided: two evaluations)
    assert r.cost.denoiser_backwards == 4 * 2 * 2  # every iterate but the last is differentiated through
    assert r.cost.denoiser_equivalents == 20 + 2 * 16 == r.cost.to_dict()["denoiser_equivalents"]
    again = reno(tiny_shapes_pipeline, "a red circle", rewards=rewards, seed=0, steps=2, iterations=4, lr=5.0,
                 gradient_checkpointing=True)  # fmt: skip
    assert torch.allclose(again.latents, r.latents, atol=1e-5)  # the same optimisation, less memory
    assert again.cost.denoiser_evals == 20 + 16 and again.cost.denoiser_backwards == 16  # a recompute per backward
    assert r.cost.vae_decodes == 5 + 1 and r.skipped_updates == [0]


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1.0, 1e15])
def test_regulariser_gradient_is_finite(scale):
    z = (torch.randn(2, 4, 8, 8) * scale).requires_grad_(True)
    reg = chi_regulariser(z, 0.01)
    reg.sum().backward()
    assert torch.isfinite(reg).all() and torch.isfinite(z.grad).all()


def test_regulariser_is_smallest_near_the_typical_norm():
    d = 256
    norms = torch.tensor([1.0, (d - 1) ** 0.5, 100.0])
    z = norms[:, None] * torch.nn.functional.normalize(torch.ones(3, d), dim=-1)
    reg = chi_regulariser(z, 1.0)
    assert reg[1] < reg[0] and reg[1] < reg[2]


def test_one_step_pipeline(tiny_sd_pipeline):
    scorer = build_shapes_scorer("latent", tiny_sd_pipeline.vae.config.scaling_factor)
    r = reno(tiny_sd_pipeline, "a red ball", rewards=[Reward(scorer)], steps=1, iterations=2, guidance_scale=0.0)
    assert r.images[0].size == (16, 16) and len(r.rewards[0]) == 3
    assert r.cost.denoiser_evals == 3 and torch.isfinite(r.latents).all()
    assert r.cost.denoiser_backwards == 2


class NaNScorer(LatentCLIPScorer):
    def score(self, x, prompts, t=None):
        return super().score(x, prompts, t) + torch.sqrt(x.sum() * 0 - 1)


def test_non_finite_gradients_never_reach_the_noise(tiny_shapes_pipeline, latent_scorer):
    nan = NaNScorer(latent_scorer.clip, latent_scorer.tokenizer, latent_scorer.vae_scaling_factor)
    r = reno(tiny_shapes_pipeline, "a red circle", rewards=[Reward(nan)], seed=1, steps=2, iterations=2)
    plain = generate(tiny_shapes_pipeline, "a red circle", seed=1, num_inference_steps=2)
    assert r.skipped_updates == [2] and r.best_iteration == [0]
    assert torch.allclose(r.latents, plain.latents, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda s: dict(rewards=[]), "non-empty"),
        (lambda s: dict(rewards=[s]), "Reward objects"),
        (lambda s: dict(rewards=[Reward(s)], iterations=1, seed=-1), "seeds"),
        (lambda s: dict(rewards=[Reward(s)], iterations=1, steps=0), "num_inference_steps"),
    ],
)
def test_bad_options(tiny_shapes_pipeline, latent_scorer, make, match):
    options = {"steps": 2, **make(latent_scorer)}
    with pytest.raises(ValueError, match=match):
        reno(tiny_shapes_pipeline, "a red circle", **options)


def test_bad_config_and_rewards():
    with pytest.raises(ValueError):
        NoiseOptimization(lr=float("nan"))
    with pytest.raises(ValueError):
        NoiseOptimization(iterations=-1)
    with pytest.raises(ValueError, match="concept"):
        Reward(build_shapes_scorer("latent", 1.0), avoid=True)


def test_generate_dispatches_noise_optimization(tiny_shapes_pipeline, latent_scorer):
    r = generate(
        tiny_shapes_pipeline,
        "a red circle",
        method="noise-optimization",
        scorer=latent_scorer,
        avoid="blue",
        iterations=1,
    )
    assert len(r.rewards[0]) == 2 and r.stages[0]["settings"]["rewards"][1]["avoid"]
    with pytest.raises(ValueError, match="colour or shape"):
        generate(
            tiny_shapes_pipeline,
            "a red circle",
            method="noise-optimization",
            scorer=latent_scorer,
            avoid="purple",
            iterations=1,
        )


def _recommending(tiny_shapes_path, tmp_path, **settings):
    """The tiny Shapes pipeline, saved again with `settings` added to its latentalign.json."""
    import json
    import shutil

    from latentalign import load_pipeline

    folder = tmp_path / "pipeline"
    shutil.copytree(tiny_shapes_path, folder)
    defaults = json.loads((folder / "latentalign.json").read_text())
    (folder / "latentalign.json").write_text(json.dumps({**defaults, "noise-optimization": settings}))
    return load_pipeline(str(folder))


@pytest.mark.parametrize(
    "setting, option, recommend, default",
    [
        ("iterations", "iterations", recommended_iterations, 50),
        ("num_inference_steps", "num_inference_steps", recommended_steps, 4),
    ],
)
def test_pipeline_recommends_noise_optimization_settings(
    tiny_shapes_path, latent_scorer, tmp_path, setting, option, recommend, default
):
    from latentalign import load_pipeline

    pipe = _recommending(tiny_shapes_path, tmp_path, **{setting: 2})
    assert recommend(pipe) == 2
    assert recommend(load_pipeline(str(tiny_shapes_path))) == default
    other = {"iterations": 1, "num_inference_steps": 1}
    other.pop(option)
    run = dict(method="noise-optimization", scorer=latent_scorer, **other)
    recommended = generate(pipe, "a red circle", **run)
    settings = {**recommended.settings, **recommended.stages[0]["settings"]}
    assert settings[option] == 2
    if option == "iterations":  # the initial noise and 2 updates were scored
        assert len(recommended.rewards[0]) == 3
    chosen = generate(pipe, "a red circle", **{option: 3}, **run)  # an explicit setting wins
    assert {**chosen.settings, **chosen.stages[0]["settings"]}[option] == 3


def test_pipeline_recommends_its_reward(tiny_shapes_path, latent_scorer, tmp_path):
    from latentalign.methods import resolve_scorer
    from latentalign.scorers import save_scorer

    save_scorer(latent_scorer, tmp_path / "reward")
    pipe = _recommending(tiny_shapes_path, tmp_path, scorer=str(tmp_path / "reward"))
    stage = NoiseOptimization().with_pipeline_defaults(pipe)
    chosen = resolve_scorer(stage.scorer, pipe, "noise-optimization")
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(chosen.score(z, "a red circle"), latent_scorer.score(z, "a red circle"))
    assert resolve_scorer(None, pipe, "best-of-n", "shapes-pixel").kind == "pixel"  # others keep their defaults
    assert resolve_scorer(latent_scorer, pipe, "noise-optimization") is latent_scorer  # a given scorer wins
    result = generate(pipe, "a red circle", method="noise-optimization", iterations=1)
    assert len(result.rewards[0]) == 2


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_sdxl_and_sd3_pipelines_optimise_the_standard_noise(request, family):
    """On a sigma-space (Euler) scheduler the sampler starts at init_noise_sigma times the noise; ReNO optimises the
    standard Gaussian noise itself (what the chi regulariser's typical norm is about), so lr 0 is plain generation;
    gradients reach the noise through SDXL's UNet and SD3's transformer."""
    pipe = request.getfixturevalue(f"tiny_{family}_pipeline")
    scorer = build_shapes_scorer("latent", pipe.vae.config.scaling_factor)
    kw = {"rewards": [Reward(scorer)], "seed": 3, "guidance_scale": 2.0, "steps": 2, "iterations": 2}
    r = reno(pipe, "a red ball", lr=0.0, **kw)
    plain = generate(pipe, "a red ball", seed=3, num_inference_steps=2, guidance_scale=2.0)
    assert torch.allclose(r.latents, plain.latents, rtol=1e-5, atol=1e-5)
    moved = reno(pipe, "a red ball", lr=5.0, **kw)
    assert len(set(moved.rewards[0])) > 1 and torch.isfinite(moved.latents).all()


def test_float16_pixel_reward_through_a_vae_that_asks_for_float32(tiny_sdxl_pipeline):
    """ReNO's main setting (SDXL-Turbo in fp16) with a pixel reward: SDXL's VAE has force_upcast, so the decode
    that gradients flow through runs on a float32 copy (casting the VAE in place mid-graph broke backward); the
    chi regulariser stays in float32 and the user's VAE stays float16."""
    import copy

    pipe = copy.deepcopy(tiny_sdxl_pipeline).to(torch.float16)
    assert pipe.vae.config.force_upcast
    scorer = build_shapes_scorer("pixel", pipe.vae.config.scaling_factor, vae=pipe.vae)
    r = reno(pipe, "a red ball", rewards=[Reward(scorer)], steps=1, iterations=2, guidance_scale=1.0)
    assert len(set(r.rewards[0])) > 1 and r.skipped_updates == [0]
    assert r.latents.dtype == torch.float16 and torch.isfinite(r.latents).all()
    assert pipe.vae.dtype == torch.float16 and all(p.requires_grad for p in pipe.vae.parameters())


def test_explicit_rewards_ignore_the_pipelines_recommended_scorer():
    import latentalign
    from latentalign.methods import NoiseOptimization, Reward
    from latentalign.scorers import load_scorer

    pipe = latentalign.load_pipeline("shapes-one-step")  # its latentalign.json recommends a scorer and 13 iterations
    stage = NoiseOptimization(rewards=[Reward(load_scorer("shapes-latent"))]).with_pipeline_defaults(pipe)
    assert stage.scorer is None and stage.iterations == 13
