"""Distilling pixel CLIP into a Latent-CLIP with a stem, on tiny components: what carries over, a short run,
resume after an interruption, bad configs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import latentalign.training.distill as td
from latentalign.scorers import build_shapes_scorer, load_scorer, save_scorer
from latentalign.training.distill import DistillConfig, distill_latent_clip, student_forward, student_from

TINY = dict(steps=4, batch=8, samples=8, samples_per_prompt=2, renders=8, holdout=4, stem_width=16, stem_layers=2)
TINY |= dict(checkpoint_every=2, eval_per_suite=2)
PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a red square"]


@pytest.fixture(scope="module")
def teacher_path(tiny_shapes_pipeline, tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    scaling = float(tiny_shapes_pipeline.vae.config.scaling_factor)
    save_scorer(build_shapes_scorer("pixel", scaling, seed=3), path)
    return path


@pytest.mark.parametrize(
    "bad",
    [
        dict(steps=0),
        dict(lr=0),
        dict(stem_width=0),
        dict(token_weight=-1),
        dict(samples=0, renders=0),
        dict(samples=10, samples_per_prompt=4),
        dict(perturb=float("nan")),
        dict(holdout=10**9),
        dict(student="pixel"),
        dict(student="noisy", renders=8),  # a noisy student learns from trajectories alone
        dict(student="noisy", perturb=0.5),
        dict(student="noisy", samples=8, holdout=8),
        dict(renoise=0.5),  # a latent student's latents are clean
        dict(student="noisy", renoise=1.5),
    ],
)
def test_bad_configs_fail_at_once(bad):
    with pytest.raises(ValueError):
        DistillConfig(**bad)


def test_student_takes_the_teachers_towers_and_scores_text_alike(tiny_shapes_pipeline, teacher_path):
    teacher = load_scorer(teacher_path, vae=tiny_shapes_pipeline.vae)
    student = student_from(teacher, 8, teacher.vae_scaling_factor, DistillConfig(stem_width=16, stem_layers=2))
    torch.testing.assert_close(student.embed_text(PROMPTS), teacher.embed_text(PROMPTS))
    t_state, s_state = teacher.clip.state_dict(), student.clip.state_dict()
    shared = [k for k in t_state if "patch_embedding" not in k]
    assert all(torch.equal(t_state[k], s_state[k]) for k in shared)
    frozen = [*student.clip.text_model.parameters(), student.clip.logit_scale]
    assert not any(p.requires_grad for p in frozen) and all(p.requires_grad for p in student.stem.parameters())
    z = torch.randn(3, 4, 8, 8)
    tokens, image = student_forward(student, z)
    assert tokens.shape == (3, 64, teacher.clip.config.vision_config.hidden_size)
    torch.testing.assert_close(image, student.embed_images(z))  # one stem pass gives what embed_images gives
    assert student.score(z, PROMPTS).shape == (3,)


def test_the_teachers_patch_grid_must_be_the_latent_grid(tiny_shapes_pipeline, teacher_path):
    teacher = load_scorer(teacher_path, vae=tiny_shapes_pipeline.vae)
    with pytest.raises(ValueError, match="one latent cell to one teacher patch"):
        student_from(teacher, 16, teacher.vae_scaling_factor, DistillConfig())


def test_teacher_must_be_a_pixel_scorer(tiny_shapes_pipeline, tmp_path):
    scaling = float(tiny_shapes_pipeline.vae.config.scaling_factor)
    save_scorer(build_shapes_scorer("latent", scaling), tmp_path / "latent")
    with pytest.raises(ValueError, match="must be a pixel scorer"):
        distill_latent_clip(
            tmp_path / "run", DistillConfig(teacher=str(tmp_path / "latent"), **TINY), tiny_shapes_pipeline
        )


def test_short_run_saves_a_loadable_latent_clip(tiny_shapes_pipeline, teacher_path, tmp_path):
    cfg = DistillConfig(teacher=str(teacher_path), **TINY)
    final = distill_latent_clip(tmp_path, cfg, tiny_shapes_pipeline, log=lambda *_: None)
    scorer = load_scorer(final)
    assert scorer.kind == "latent" and scorer.stem is not None
    teacher = load_scorer(teacher_path)
    torch.testing.assert_close(scorer.embed_text(PROMPTS), teacher.embed_text(PROMPTS))
    report = json.loads((final / "training.json").read_text())
    assert report["step"] == 4 and -1 <= report["holdout_cosine"] <= 1
    assert set(report["zero_shot"]) == {"single_object", "two_objects", "relation", "counting"}
    data = load_file(tmp_path / "distillation.safetensors")
    # samples and renders, each once more perturbed; the teacher's view is its resized, normalised decode
    assert data["latents"].shape == (2 * (8 + 8), 4, 8, 8)
    assert data["teacher_view"].shape == (32, 3, 32, 32) and data["teacher_embedding"].shape == (32, 64)
    teacher = load_scorer(teacher_path, vae=tiny_shapes_pipeline.vae)
    with torch.no_grad():
        expected = teacher.embed_images(teacher.decode(data["latents"][:4]))
    torch.testing.assert_close(data["teacher_embedding"][:4], expected, atol=1e-5, rtol=1e-5)


def test_interrupted_run_resumes_to_the_same_weights(tiny_shapes_pipeline, teacher_path, tmp_path, monkeypatch):
    cfg = DistillConfig(teacher=str(teacher_path), **TINY)
    quiet = dict(log=lambda *_: None)
    straight = distill_latent_clip(tmp_path / "a", cfg, tiny_shapes_pipeline, **quiet)
    real_save = td.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(td, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        distill_latent_clip(tmp_path / "b", cfg, tiny_shapes_pipeline, **quiet)
    assert json.loads((tmp_path / "b/checkpoint/meta.json").read_text())["step"] == 2
    monkeypatch.setattr(td, "save_checkpoint", real_save)
    resumed = distill_latent_clip(tmp_path / "b", cfg, tiny_shapes_pipeline, **quiet)
    for name in ("model.safetensors", "latent_stem.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="another config"):
        distill_latent_clip(
            tmp_path / "b", DistillConfig(**{**TINY, "teacher": str(teacher_path), "steps": 6}), tiny_shapes_pipeline
        )


def test_a_cache_made_with_other_settings_is_refused(tiny_shapes_pipeline, teacher_path, tmp_path):
    import shutil

    cfg = DistillConfig(teacher=str(teacher_path), **TINY)
    distill_latent_clip(tmp_path, cfg, tiny_shapes_pipeline, log=lambda *_: None)
    shutil.rmtree(tmp_path / "checkpoint")
    other = DistillConfig(**{**TINY, "teacher": str(teacher_path), "renders": 12})
    with pytest.raises(ValueError, match="delete it"):
        distill_latent_clip(tmp_path, other, tiny_shapes_pipeline, log=lambda *_: None)


def test_second_round_starts_from_the_student_and_learns_its_reno_iterates(
    tiny_shapes_pipeline, teacher_path, tmp_path
):
    quiet = dict(log=lambda *_: None)
    first = distill_latent_clip(
        tmp_path / "a", DistillConfig(teacher=str(teacher_path), **TINY), tiny_shapes_pipeline, **quiet
    )
    again = dict(TINY, teacher=str(teacher_path), init_from=str(first), reward_samples=2, reward_iterations=1, steps=1)
    second = distill_latent_clip(tmp_path / "b", DistillConfig(**again), tiny_shapes_pipeline, **quiet)
    data = load_file(tmp_path / "b/distillation.safetensors")
    assert len(data["latents"]) == 2 * (8 + 8 + 2)  # samples, renders, one iterate per ReNO run; x2 perturbed
    assert load_file(tmp_path / "b/reward_samples.safetensors")["final"].shape == (2, 4, 8, 8)
    assert load_scorer(second).stem is not None
    scaling = float(tiny_shapes_pipeline.vae.config.scaling_factor)
    save_scorer(build_shapes_scorer("latent", scaling), tmp_path / "plain")
    plain = dict(again, init_from=str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="not a distilled Latent-CLIP"):
        distill_latent_clip(tmp_path / "c", DistillConfig(**plain), tiny_shapes_pipeline, **quiet)
    with pytest.raises(ValueError, match="needs init_from"):
        DistillConfig(reward_samples=2)


NOISY = dict(TINY, student="noisy", renders=None, perturb=None, holdout=2)


def test_noisy_student_learns_the_teachers_view_of_each_steps_x0_prediction(
    tiny_shapes_pipeline, teacher_path, tmp_path
):
    cfg = DistillConfig(teacher=str(teacher_path), **NOISY)
    assert (cfg.renders, cfg.perturb) == (0, 0.0)
    final = distill_latent_clip(tmp_path, cfg, tiny_shapes_pipeline, log=lambda *_: None)
    scorer = load_scorer(final)
    assert scorer.kind == "noisy" and scorer.stem.config["in_channels"] == 5 and scorer.in_channels == 4
    data = load_file(tmp_path / "distillation.safetensors")
    traj = load_file(tmp_path / "trajectories.safetensors")
    steps = traj["latents"].shape[1]  # the tiny pipeline's 3; each trajectory adds its final latents at t = 0
    assert data["latents"].shape == (8 * (steps + 1), 4, 8, 8)
    assert data["timesteps"].tolist()[: steps + 1] == [*traj["timesteps"].long().tolist(), 0]
    assert data["trajectory"].tolist()[: 2 * (steps + 1)] == [0] * (steps + 1) + [1] * (steps + 1)
    torch.testing.assert_close(data["latents"][1], traj["latents"][0, 1])
    torch.testing.assert_close(data["latents"][steps], traj["final"][0])
    teacher = load_scorer(teacher_path, vae=tiny_shapes_pipeline.vae)
    with torch.no_grad():  # the target of z_t is the teacher on the decoded x0 prediction at that step
        expected = teacher.embed_images(teacher.decode(torch.stack([traj["x0"][0, 1], traj["final"][0]])))
    torch.testing.assert_close(data["teacher_embedding"][[1, steps]], expected, atol=1e-5, rtol=1e-5)
    report = json.loads((final / "training.json").read_text())
    # held back: the last 2 trajectories (one prompt group of samples_per_prompt 2), every step of them
    assert len(report["holdout_cosine_by_timestep"]) == steps + 1 and -1 <= report["holdout_cosine"] <= 1
    # the cached data serves another run of the same data settings (here with renoised rows), and no other
    quiet = dict(log=lambda *_: None)
    again = DistillConfig(teacher=str(teacher_path), **dict(NOISY, renoise=1.0))
    renoised = distill_latent_clip(_with_caches_of(tmp_path, tmp_path / "b"), again, tiny_shapes_pipeline, **quiet)
    assert load_scorer(renoised).kind == "noisy"
    assert torch.equal(load_file(tmp_path / "b/distillation.safetensors")["latents"], data["latents"])
    other = DistillConfig(teacher=str(teacher_path), **dict(NOISY, samples=6))
    with pytest.raises(ValueError, match="delete it"):
        distill_latent_clip(_with_caches_of(tmp_path, tmp_path / "c"), other, tiny_shapes_pipeline, **quiet)


def _with_caches_of(src, dst):
    """A fresh run folder `dst` holding copies of `src`'s trajectory and distillation caches."""
    import shutil

    dst.mkdir()
    for name in ("trajectories.safetensors", "distillation.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


def test_noisy_student_from_a_distilled_latent_clip_starts_as_it(tiny_shapes_pipeline, teacher_path, tmp_path):
    quiet = dict(log=lambda *_: None)
    latent = distill_latent_clip(
        tmp_path / "latent", DistillConfig(teacher=str(teacher_path), **TINY), tiny_shapes_pipeline, **quiet
    )
    teacher = load_scorer(teacher_path, vae=tiny_shapes_pipeline.vae)
    cfg = DistillConfig(teacher=str(teacher_path), **dict(NOISY, init_from=str(latent)))
    student = student_from(teacher, 8, teacher.vae_scaling_factor, cfg)
    td.init_student(student, load_scorer(latent), teacher)
    z, t = torch.randn(3, 4, 8, 8), torch.tensor([999, 500, 0])
    with torch.no_grad():  # zero timestep channel and embedding: the Latent-CLIP's score, at every t
        torch.testing.assert_close(student.score(z, PROMPTS, t), load_scorer(latent).score(z, PROMPTS))
        tokens, image = student_forward(student, z, t)
        torch.testing.assert_close(image, student.embed_images(z, t))
    assert tokens.shape == (3, 64, teacher.clip.config.vision_config.hidden_size)
    save_scorer(student, tmp_path / "saved")
    with torch.no_grad():
        torch.testing.assert_close(load_scorer(tmp_path / "saved").score(z, PROMPTS, t), student.score(z, PROMPTS, t))
    noisy = distill_latent_clip(tmp_path / "noisy", cfg, tiny_shapes_pipeline, **quiet)
    assert load_scorer(noisy).kind == "noisy"
    wider = DistillConfig(teacher=str(teacher_path), **dict(NOISY, init_from=str(latent), stem_width=8))
    with pytest.raises(ValueError, match="another stem"):
        distill_latent_clip(tmp_path / "wider", wider, tiny_shapes_pipeline, **quiet)


def test_ship_scorer_makes_the_shipped_name_load_it(tiny_shapes_pipeline, tmp_path, monkeypatch):
    import latentalign.embedded as embedded_module
    from latentalign.scorers.factory import check_scorer_source, ship_scorer

    monkeypatch.setattr(embedded_module, "SHAPES_SCORERS", tmp_path / "shipped")
    with pytest.raises(FileNotFoundError, match="train distill"):
        load_scorer("shapes-latent-distilled")
    scaling = float(tiny_shapes_pipeline.vae.config.scaling_factor)
    scorer = build_shapes_scorer("latent", scaling, seed=4)
    save_scorer(scorer, tmp_path / "run")
    assert ship_scorer(tmp_path / "run", "shapes-latent-distilled") == tmp_path / "shipped" / "latent_distilled"
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            load_scorer("shapes-latent-distilled").score(z, PROMPTS[:2]), scorer.score(z, PROMPTS[:2])
        )
    with pytest.raises(FileNotFoundError, match="neither a shipped scorer nor a folder"):
        check_scorer_source(str(tmp_path / "nowhere"))


def test_cli_refuses_shipping_a_noisy_student_before_any_work(capsys, tmp_path):
    from latentalign.cli import main

    out = tmp_path / "run"
    assert main(["train", "distill", "--student", "noisy", "--ship", "--out", str(out)]) == 2
    assert "no noisy one is shipped" in capsys.readouterr().err and not out.exists()
    assert main(["train", "distill", "--student", "noisy", "--renders", "8", "--out", str(out)]) == 2
    assert "trajectories alone" in capsys.readouterr().err and not out.exists()
