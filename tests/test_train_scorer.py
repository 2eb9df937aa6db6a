"""Scorer training on tiny components: the loss, a short run, resume after an interruption, bad configs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import latentalign.training.scorer as ts
from latentalign.scorers import load_scorer
from latentalign.training.scorer import ContrastiveLoss, ScorerTrainConfig, train_scorer

TINY = dict(steps=4, batch=8, pool_size=48, trajectories=8, checkpoint_every=2, eval_per_suite=3, hard_negatives=1)


def test_contrastive_loss_rewards_matching_pairs():
    torch.manual_seed(0)
    e = F.normalize(torch.randn(4, 8), dim=-1)
    captions = ["a", "b", "c", "d"]
    aligned = torch.ones(4, dtype=torch.bool)
    good = ContrastiveLoss()(e, e, captions, aligned, torch.tensor(50.0))["loss"]
    bad = ContrastiveLoss()(e, e.roll(1, 0), captions, aligned, torch.tensor(50.0))["loss"]
    assert good < 0.05 < bad


def test_contrastive_loss_masks_duplicates_and_uses_misaligned_images_as_negatives():
    e = torch.eye(3)
    scale = torch.tensor(50.0)
    # images 0 and 1 share a caption and are both aligned: neither is the other's negative
    dup = ContrastiveLoss()(e, torch.stack([e[0], e[0], e[2]]), ["x", "x", "z"], torch.ones(3, dtype=bool), scale)
    assert torch.isfinite(dup["loss"])
    # image 1 is a misaligned candidate for "x": it has no positive, and scoring it like the aligned one costs
    aligned = torch.tensor([True, False, True])
    img_close = torch.stack([e[0], e[0], e[2]])
    img_far = torch.stack([e[0], e[1], e[2]])
    text = torch.stack([e[0], e[0], e[2]])
    near = ContrastiveLoss()(img_close, text, ["x", "x", "z"], aligned, scale)["text_to_image"]
    far = ContrastiveLoss()(img_far, text, ["x", "x", "z"], aligned, scale)["text_to_image"]
    assert far < near


def test_verdict_term_ranks_a_caption_against_its_own_hard_negatives():
    # Two images, one hard negative each: image 0 (aligned) looks like its caption, image 1 (misaligned) looks
    # like its own corruption. The verdict term is small when that is so, and large when it is the other way.
    e = torch.nn.functional.normalize(torch.eye(4)[:2] + 0.01, dim=-1)
    other = torch.nn.functional.normalize(torch.eye(4)[2:] + 0.01, dim=-1)
    aligned, scale = torch.tensor([True, False]), torch.tensor(20.0)
    captions = ["x", "y"]
    right = torch.cat([torch.stack([e[0], other[0]]), torch.stack([other[1], e[1]])])  # captions, then negatives
    wrong = torch.cat([torch.stack([other[0], e[1]]), torch.stack([e[0], other[1]])])
    loss = ContrastiveLoss()
    good = loss(e, right, captions, aligned, scale, hard_negatives=1, verdict_weight=1.0)
    bad = loss(e, wrong, captions, aligned, scale, hard_negatives=1, verdict_weight=1.0)
    assert good["verdict"] < 0.01 < 5 < bad["verdict"]
    plain = loss(e, right, captions, aligned, scale, hard_negatives=1)
    assert "verdict" not in plain and torch.isclose(good["loss"] - plain["loss"], good["verdict"])


@pytest.mark.parametrize(
    "bad",
    [
        dict(kind="clip"),
        dict(split="heldout"),
        dict(steps=0),
        dict(trajectory_share=2),
        dict(noisy_reads="rgb"),
        dict(verdict_weight=-1),
        dict(verdict_weight=1, hard_negatives=0),
    ],
)
def test_bad_configs_fail_at_once(bad):
    with pytest.raises(ValueError):
        ScorerTrainConfig(**bad)


@pytest.mark.parametrize("kind", ["pixel", "latent", "noisy"])
def test_short_run_saves_a_loadable_scorer(kind, tiny_shapes_pipeline, tmp_path):
    final = train_scorer(tmp_path, ScorerTrainConfig(kind=kind, **TINY), tiny_shapes_pipeline, log=lambda *_: None)
    scorer = load_scorer(final, vae=tiny_shapes_pipeline.vae)
    assert scorer.kind == kind
    report = json.loads((final / "training.json").read_text())
    assert report["step"] == 4 and set(report["zero_shot"]) == {"single_object", "two_objects", "relation", "counting"}
    assert all(0 <= v <= 1 for v in report["zero_shot"].values())


def test_interrupted_run_resumes_to_the_same_weights(tiny_shapes_pipeline, tmp_path, monkeypatch):
    cfg = ScorerTrainConfig(kind="noisy", **TINY)
    quiet = dict(log=lambda *_: None)
    straight = train_scorer(tmp_path / "a", cfg, tiny_shapes_pipeline, **quiet)

    real_save = ts.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ts, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_scorer(tmp_path / "b", cfg, tiny_shapes_pipeline, **quiet)
    assert json.loads((tmp_path / "b/checkpoint/meta.json").read_text())["step"] == 2
    monkeypatch.setattr(ts, "save_checkpoint", real_save)
    resumed = train_scorer(tmp_path / "b", cfg, tiny_shapes_pipeline, **quiet)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_config(tiny_shapes_pipeline, tmp_path):
    train_scorer(tmp_path, ScorerTrainConfig(kind="latent", **TINY), tiny_shapes_pipeline, log=lambda *_: None)
    with pytest.raises(ValueError, match="another config"):
        train_scorer(tmp_path, ScorerTrainConfig(kind="latent", **{**TINY, "steps": 6}), tiny_shapes_pipeline)
