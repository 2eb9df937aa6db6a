"""The embedded Shapes pipeline as shipped: loadable by stock diffusers, consistent with the world it draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

import latentalign
from latentalign.pipeline import SHAPES_ONE_STEP_WEIGHTS, SHAPES_WEIGHTS
from latentalign.world import words


def test_stock_diffusers_loads_the_shipped_pipeline():
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_WEIGHTS)
    assert pipe.vae.config.latent_channels == 4 and pipe.unet.config.sample_size == 8
    files = [p for p in SHAPES_WEIGHTS.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert not files, "weights must be safetensors"
    assert sum(p.stat().st_size for p in SHAPES_WEIGHTS.rglob("*.safetensors")) <= 40 * 2**20


def test_shipped_settings_are_what_a_new_training_would_write(tmp_path):
    from latentalign.generation import sampling_defaults
    from latentalign.pipeline import write_defaults

    write_defaults(tmp_path)
    shipped = json.loads((SHAPES_WEIGHTS / "latentalign.json").read_text())
    assert json.loads((tmp_path / "latentalign.json").read_text()) == shipped
    # the recommendation is read back from the shipped folder
    defaults = sampling_defaults(latentalign.load_pipeline("shapes"))
    assert defaults.for_method("noise-optimization") == shipped["noise-optimization"]


def test_shipped_tokenizer_knows_every_word_of_the_world():
    tokenizer = latentalign.load_pipeline("shapes").tokenizer
    for word in words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_shipped_pipeline_generates_with_its_recommended_settings():
    pipe = latentalign.load_pipeline("shapes")
    settings = json.loads((SHAPES_WEIGHTS / "latentalign.json").read_text())
    result = latentalign.generate(pipe, ["a red circle", "two blue squares"], seed=[0, 1])
    assert result.settings.items() >= {k: settings[k] for k in ("num_inference_steps", "guidance_scale")}.items()
    assert [im.size for im in result.images] == [(32, 32), (32, 32)]
    assert torch.isfinite(result.latents).all()
    assert result.cost.denoiser_evals == 2 * 2 * settings["num_inference_steps"]


@pytest.mark.parametrize("kind", ["pixel", "latent", "noisy", "judge"])
def test_shipped_scorers_load_and_read_the_shipped_pipeline(kind):
    from latentalign.scorers import load_scorer

    pipe = latentalign.load_pipeline("shapes")
    scorer = load_scorer(f"shapes-{kind}", vae=pipe.vae)
    assert scorer.kind == kind
    latents = torch.randn(2, 4, 8, 8)
    x = scorer.decode(latents) if kind == "pixel" else latents
    t = torch.tensor([0, 500]) if kind in ("noisy", "judge") else None
    scores = scorer.score(x, "a red circle", t)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert scorer.vae_scaling_factor == pipe.vae.config.scaling_factor


def test_unknown_shipped_scorer_name_is_a_missing_folder():
    from latentalign.scorers import load_scorer

    with pytest.raises(FileNotFoundError):
        load_scorer("shapes-giant")


def test_shipped_one_step_pipeline_is_a_stock_one_step_pipeline_of_the_same_world():
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_ONE_STEP_WEIGHTS)
    teacher = StableDiffusionPipeline.from_pretrained(SHAPES_WEIGHTS)
    assert pipe.scheduler.config.prediction_type == "sample"
    same_keys = [k for k in teacher.unet.config if k != "_name_or_path"]
    assert all(pipe.unet.config[k] == teacher.unet.config[k] for k in same_keys)
    for name in ("vae", "text_encoder"):  # the student shares the teacher's decoder and prompt encoder
        mine, theirs = getattr(pipe, name).state_dict(), getattr(teacher, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    files = [p for p in SHAPES_ONE_STEP_WEIGHTS.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert not files, "weights must be safetensors"


def test_shipped_one_step_settings_are_what_shipping_writes(tmp_path, monkeypatch):
    import latentalign.pipeline as pipeline_module

    shipped = json.loads((SHAPES_ONE_STEP_WEIGHTS / "latentalign.json").read_text())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latentalign.json").write_text("{}")
    monkeypatch.setattr(pipeline_module, "SHAPES_ONE_STEP_WEIGHTS", tmp_path / "shipped")
    written = pipeline_module.ship_one_step(tmp_path / "run")
    assert json.loads((written / "latentalign.json").read_text()) == shipped
    pipe = latentalign.load_pipeline("shapes-one-step")
    result = latentalign.generate(pipe, ["a red circle", "two blue squares"], seed=[0, 1])
    assert result.settings.items() >= {"num_inference_steps": 1, "guidance_scale": 1.0}.items()
    assert result.cost.denoiser_evals == 2  # one unguided UNet call per image
    assert torch.isfinite(result.latents).all()


def test_shipped_projector_is_the_one_step_pipelines_default_and_records_its_training():
    from latentalign.methods import load_projector

    projector = load_projector("shapes-projector")
    folder = Path(latentalign.__file__).parent / "weights" / "shapes_projector"
    training = json.loads((folder / "projector.json").read_text())["training"]
    assert training["pipeline"] == "shapes-one-step" and training["scorer"] == "shapes-latent-distilled"
    assert training["step"] == training["config"]["steps"]
    pipe = latentalign.load_pipeline("shapes-one-step")
    prompts = ["a red circle left of a blue square", "two green triangles"]
    result = latentalign.generate(pipe, prompts, seed=[0, 1], method="noise-projection")  # the pipeline's projector
    explicit = latentalign.generate(pipe, prompts, seed=[0, 1], method="noise-projection", projector=projector)
    assert torch.equal(result.latents, explicit.latents)
    assert result.cost.projector_calls == 2 and result.cost.denoiser_evals == 2
    assert not any(p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"} for p in folder.rglob("*"))


def test_shipped_judge_was_trained_with_the_commands_defaults():
    from dataclasses import asdict

    from latentalign import embedded
    from latentalign.training.judge import JudgeTrainConfig

    report = json.loads((embedded.SHAPES_SCORERS / "judge" / "training.json").read_text())
    # `latentalign train judge --model shapes --ship` remakes it (the 2-process run splits the same global batch)
    assert report["config"] == json.loads(json.dumps(asdict(JudgeTrainConfig())))
    from latentalign.world import suite

    heldout = {p for name in ("single_object", "two_objects", "relation", "counting") for p in suite(name, "heldout")}
    assert not heldout & set(report["train_prompts"] + report["kept_aside_prompts"])
