"""Distilling a pipeline into one step: the pairs are the teacher's samples, the student's training step is the
sampler's step, the result is a stock one-step pipeline, and an interrupted run resumes to the same weights."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import SHAPES_DEFAULTS
from safetensors.torch import load_file

import latentalign.training.one_step as one_step_training
from latentalign import generate, load_pipeline
from latentalign.adapters import Denoiser
from latentalign.cli import main
from latentalign.training.one_step import OneStepTrainConfig, one_step, teacher_pairs, train_one_step
from latentalign.world import SUITE_NAMES, suite

TINY = OneStepTrainConfig(pairs=12, steps=4, batch=4, warmup=1, pair_batch=5, checkpoint_every=2)
UNET = "unet/diffusion_pytorch_model.safetensors"


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def distilled(tiny_shapes_pipeline, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_step")
    train_one_step(out, TINY, tiny_shapes_pipeline, log=quiet)
    return out


def test_pairs_are_the_teachers_samples_on_train_prompts(distilled, tiny_shapes_pipeline):
    pairs = teacher_pairs(tiny_shapes_pipeline, TINY, distilled / "pairs.safetensors", log=quiet)  # the cache
    assert pairs["noise"].shape == pairs["final"].shape == (TINY.pairs, 4, 8, 8)
    heldout = {p for name in SUITE_NAMES for p in suite(name, "heldout")}
    assert not heldout & set(pairs["prompts"])
    for i in (0, 7):  # across a pair_batch boundary
        seed = 20_000_000 + i
        ref = generate(tiny_shapes_pipeline, pairs["prompts"][i], seed=seed)  # the teacher's own defaults
        torch.testing.assert_close(pairs["final"][i], ref.latents[0], rtol=1e-3, atol=1e-3)  # batched vs single
        den = Denoiser(tiny_shapes_pipeline)
        torch.testing.assert_close(pairs["noise"][i], den.start([seed], SHAPES_DEFAULTS["num_inference_steps"])[0][0])


def test_result_is_a_one_step_pipeline_of_the_ema_weights(distilled, tiny_shapes_path):
    folder = distilled / "pipeline"
    assert json.loads((folder / "latentalign.json").read_text()) == {
        "num_inference_steps": 1,
        "guidance_scale": 1.0,
        "noise-optimization": {"num_inference_steps": 1},
        "world": "shapes",
    }
    report = json.loads((folder / "training.json").read_text())
    assert report["step"] == TINY.steps and set(report["losses"]) == {"2", "4"}
    assert report["teacher"] == str(tiny_shapes_path.resolve())
    ema = load_file(str(distilled / "checkpoint" / "ema_unet.safetensors"))
    raw = load_file(str(distilled / "checkpoint" / "unet.safetensors"))
    shipped = load_file(str(folder / UNET))
    assert all(torch.equal(shipped[k], ema[k]) for k in ema)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    pipe = load_pipeline(str(folder))
    assert pipe.scheduler.config.prediction_type == "sample"


def test_the_trained_step_is_the_samplers_step(distilled):
    pipe = load_pipeline(str(distilled / "pipeline"))
    den = Denoiser(pipe)
    prompts, seeds = ["a red circle", "two blue squares"], [3, 4]
    result = generate(pipe, prompts, seed=seeds)
    assert result.cost.denoiser_evals == 2  # one unguided call per image
    with torch.no_grad():
        embeds = den.encode(prompts, 1.0).prompt_embeds
        scheduler = den.new_scheduler(1)
        mine = one_step(pipe.unet, scheduler, den.start(seeds, 1)[0], embeds)
    torch.testing.assert_close(result.latents, mine)


def test_resume_gives_the_same_weights(distilled, tiny_shapes_pipeline, tmp_path, monkeypatch):
    real_save = one_step_training.save_checkpoint
    calls = []

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(one_step_training, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_one_step(tmp_path, TINY, tiny_shapes_pipeline, log=quiet)
    assert calls and not (tmp_path / "pipeline").exists()
    monkeypatch.setattr(one_step_training, "save_checkpoint", real_save)
    logs = []
    train_one_step(tmp_path, TINY, tiny_shapes_pipeline, log=logs.append)
    assert any(line.startswith("resuming") for line in logs)
    ref = load_file(str(distilled / "pipeline" / UNET))
    got = load_file(str(tmp_path / "pipeline" / UNET))
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_resume_with_another_config_is_refused(distilled, tiny_shapes_pipeline, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(distilled, out)
    with pytest.raises(ValueError, match="config"):
        train_one_step(out, replace(TINY, steps=6), tiny_shapes_pipeline, log=quiet)


def test_a_pairs_cache_of_another_size_is_refused(distilled, tiny_shapes_pipeline):
    with pytest.raises(ValueError, match="pairs"):
        teacher_pairs(tiny_shapes_pipeline, replace(TINY, pairs=13), distilled / "pairs.safetensors", log=quiet)


@pytest.mark.parametrize(
    "bad",
    [{"pairs": 0}, {"steps": 0}, {"lr": 0.0}, {"lr": float("nan")}, {"ema_decay": 1.0}, {"category_weights": (1,)}],
)
def test_bad_config_is_refused_at_once(bad):
    with pytest.raises(ValueError):
        OneStepTrainConfig(**bad)


def test_cli_refuses_bad_settings_before_loading(capsys, tmp_path):
    assert main(["train", "one-step", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
