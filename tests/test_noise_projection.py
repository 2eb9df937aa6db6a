"""Noise projection on tiny components: an untrained projector is plain generation, batched == single, save/load
round trip, the KL term, the trainer (it moves the projector, resumes to the same weights, refuses a changed config),
and bad input refused before any work."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import latentalign.training.projector as projector_training
from latentalign import generate
from latentalign.adapters import Denoiser
from latentalign.cli import main
from latentalign.methods import (
    NoiseProjection,
    NoiseProjector,
    NoiseProjectorConfig,
    load_projector,
    projection_kl,
    save_projector,
)
from latentalign.scorers import build_shapes_scorer
from latentalign.training.projector import ProjectorTrainConfig, train_projector

TINY = ProjectorTrainConfig(steps=4, batch=2, warmup=1, width=16, layers=1, heads=2, prompt_pool=8, checkpoint_every=2)
PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a red circle"]


def noise_projection(pipe, prompt, *, projector=None, **kw):
    return generate(pipe, prompt, method=NoiseProjection(projector=projector), **kw)


def quiet(*_):
    pass


def projector_for(pipe, seed: int = 0, zero: bool = False) -> NoiseProjector:
    den = Denoiser(pipe)
    cfg = NoiseProjectorConfig(latent_channels=den.latent_shape[0], text_dim=den.text_dim, width=16, heads=2)
    torch.manual_seed(seed)
    projector = NoiseProjector(cfg).eval()
    if not zero:  # a projector that does something: random output layer
        torch.nn.init.normal_(projector.out.weight, std=0.3)
    return projector


@pytest.mark.parametrize("family", ["shapes", "sdxl", "sd3"])
def test_an_untrained_projector_is_plain_generation(family, request):
    pipe = request.getfixturevalue(f"tiny_{family}_pipeline")
    kw = {"num_inference_steps": 3, "guidance_scale": 2.0}
    r = noise_projection(pipe, PROMPTS[:2], projector=projector_for(pipe, zero=True), seed=[4, 5], **kw)
    plain = generate(pipe, PROMPTS[:2], seed=[4, 5], **kw)
    assert torch.equal(r.latents, plain.latents)
    assert r.cost.projector_calls == 2 and r.cost.denoiser_evals == plain.cost.denoiser_evals


def test_projection_is_seeded_batched_equals_single_and_moves_the_noise(tiny_shapes_pipeline):
    projector = projector_for(tiny_shapes_pipeline)
    batch = noise_projection(tiny_shapes_pipeline, PROMPTS, projector=projector, seed=[1, 2, 3])
    again = noise_projection(tiny_shapes_pipeline, PROMPTS, projector=projector, seed=[1, 2, 3])
    assert torch.equal(batch.latents, again.latents)
    for i, (p, s) in enumerate(zip(PROMPTS, [1, 2, 3], strict=True)):
        single = noise_projection(tiny_shapes_pipeline, p, projector=projector, seed=s)
        torch.testing.assert_close(single.latents[0], batch.latents[i], rtol=1e-4, atol=1e-4)
    plain = generate(tiny_shapes_pipeline, PROMPTS, seed=[1, 2, 3])
    assert not torch.allclose(batch.latents, plain.latents)
    # the projection depends on the prompt: the same noise under two prompts is refined differently
    den = Denoiser(tiny_shapes_pipeline)
    with torch.no_grad():
        embeds = den.encode(PROMPTS[:2], 1.0).prompt_embeds
        noise = den.initial_noise([7, 7])
        refined = projector.project(noise, embeds)
    assert not torch.allclose(refined[0], refined[1])


def test_save_load_round_trip_and_dispatch(tiny_shapes_pipeline, tmp_path):
    projector = projector_for(tiny_shapes_pipeline, seed=3)
    folder = save_projector(projector, tmp_path / "p", extra={"training": {"step": 7}})
    saved = json.loads((folder / "projector.json").read_text())
    assert saved["width"] == 16 and saved["training"] == {"step": 7}
    loaded = load_projector(folder)
    assert loaded.config == projector.config
    mine, theirs = projector.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    direct = noise_projection(tiny_shapes_pipeline, PROMPTS[0], projector=projector, seed=2)
    by_path = generate(tiny_shapes_pipeline, PROMPTS[0], seed=2, method="noise-projection", projector=str(folder))
    assert torch.equal(direct.latents, by_path.latents)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(2, 4, 8, 8)
    assert torch.equal(projection_kl(zeros, zeros), torch.zeros(2))
    mu, log_sigma = torch.full_like(zeros, 0.5), torch.full_like(zeros, -0.2)
    expected = 0.5 * (0.25 + torch.exp(torch.tensor(-0.4)) - 1 + 0.4) * 256
    torch.testing.assert_close(projection_kl(mu, log_sigma), expected.expand(2))
    huge = projection_kl(torch.full_like(zeros, 1e18), torch.full_like(zeros, 30.0))
    assert torch.isfinite(huge).all()


def test_bad_input_is_refused_before_any_work(tiny_shapes_pipeline, tiny_sd_pipeline, tmp_path):
    wrong = NoiseProjector(NoiseProjectorConfig(latent_channels=4, text_dim=7, width=16, heads=2))
    with pytest.raises(ValueError, match="7-wide"):
        noise_projection(tiny_shapes_pipeline, "a red circle", projector=wrong)
    with pytest.raises(ValueError, match="no projector"):
        noise_projection(tiny_shapes_pipeline, "a red circle", projector=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="projector="):
        noise_projection(tiny_sd_pipeline, "a red ball")  # no pipeline default outside a shipped one
    with pytest.raises(ValueError, match="vocabulary|unknown|word"):
        noise_projection(tiny_shapes_pipeline, "a purple dragon", projector=wrong)
    for bad in ({"width": 10, "heads": 4}, {"layers": 0}, {"text_dim": 0}):
        with pytest.raises(ValueError):
            NoiseProjectorConfig(**bad)


@pytest.fixture(scope="module")
def latent_scorer(tiny_shapes_pipeline):
    return build_shapes_scorer("latent", tiny_shapes_pipeline.vae.config.scaling_factor)


@pytest.fixture(scope="module")
def trained(tiny_shapes_pipeline, latent_scorer, tmp_path_factory):
    out = tmp_path_factory.mktemp("projector")
    train_projector(out, TINY, tiny_shapes_pipeline, latent_scorer, scorer_name="tiny", log=quiet)
    return out


def test_training_moves_the_projector_and_records_itself(trained, tiny_shapes_pipeline):
    projector = load_projector(trained / "projector")
    assert projector.out.weight.abs().sum() > 0  # no longer the identity
    record = json.loads((trained / "projector" / "projector.json").read_text())["training"]
    assert record["step"] == TINY.steps and set(record["log"]) == {"2", "4"} and record["scorer"] == "tiny"
    assert record["generator_steps"] == 4  # the tiny Shapes pipeline recommends no step count: ReNO's default
    r = noise_projection(tiny_shapes_pipeline, PROMPTS, projector=projector, seed=[0, 1, 2])
    assert torch.isfinite(r.latents).all()


def test_training_resumes_to_the_same_weights(trained, tiny_shapes_pipeline, latent_scorer, tmp_path, monkeypatch):
    real_save = projector_training.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(projector_training, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_projector(tmp_path, TINY, tiny_shapes_pipeline, latent_scorer, log=quiet)
    assert not (tmp_path / "projector").exists()
    monkeypatch.setattr(projector_training, "save_checkpoint", real_save)
    logs = []
    train_projector(tmp_path, TINY, tiny_shapes_pipeline, latent_scorer, log=logs.append)
    assert any(line.startswith("resuming") for line in logs)
    ref = load_file(str(trained / "projector" / "projector.safetensors"))
    got = load_file(str(tmp_path / "projector" / "projector.safetensors"))
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="config"):
        train_projector(tmp_path, replace(TINY, steps=6), tiny_shapes_pipeline, latent_scorer, log=quiet)


def test_trainer_refuses_bad_settings(tiny_shapes_pipeline, tmp_path, capsys):
    noisy = build_shapes_scorer("noisy", tiny_shapes_pipeline.vae.config.scaling_factor)
    with pytest.raises(ValueError, match="noisy"):
        train_projector(tmp_path, TINY, tiny_shapes_pipeline, noisy, log=quiet)
    for bad in ({"steps": 0}, {"lr": float("nan")}, {"kl_weight": -1.0}, {"width": 10}):
        with pytest.raises(ValueError):
            ProjectorTrainConfig(**bad)
    assert main(["train", "projector", "--kl-weight", "-1", "--out", str(tmp_path / "cli")]) == 2
    assert "kl_weight" in capsys.readouterr().err and not (tmp_path / "cli").exists()
    # --ship names the reward recipe's projector per pipeline: shapes' would overwrite shapes-one-step's
    assert main(["train", "projector", "--model", "shapes", "--ship", "--out", str(tmp_path / "cli")]) == 2
    assert "'shapes' has no shipped name" in capsys.readouterr().err and not (tmp_path / "cli").exists()
    assert main(["generate", "a red circle", "--projector", "x", "--out", str(tmp_path / "g")]) == 2
    assert "--projector needs --method noise-projection" in capsys.readouterr().err


def test_cli_generates_with_a_projector_folder(tiny_shapes_pipeline, tiny_shapes_path, tmp_path):
    folder = save_projector(projector_for(tiny_shapes_pipeline, seed=1), tmp_path / "p")
    args = ["generate", "two red circles", "--model", str(tiny_shapes_path), "--method", "noise-projection"]
    assert main([*args, "--projector", str(folder), "--seed", "3", "--out", str(tmp_path / "g")]) == 0
    record = json.loads(next((tmp_path / "g").glob("*.json")).read_text())
    assert record["method"] == "noise-projection" and record["cost"]["projector_calls"] == 1
    assert "verdict" in record
    direct = noise_projection(tiny_shapes_pipeline, "two red circles", projector=load_projector(folder), seed=3)
    assert record["cost"]["denoiser_evals"] == direct.cost.denoiser_evals
