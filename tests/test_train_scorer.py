"""Scorer training on tiny components: the loss, a short run, resume after an interruption, bad configs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import latentalign.training.scorer as ts
from latentalign.scorers import load_scorer
from latentalign.training.scorer import (
    ContrastiveLoss,
    ScorerTrainConfig,
    distillation_kl,
    mixed_pairs,
    ranking_loss,
    train_scorer,
)

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
        dict(lr=0),
        dict(distill_weight=1, kind="latent"),
        dict(distill_weight=1, kind="noisy", trajectory_share=0),
        dict(distill_weight=-1, kind="noisy"),
        dict(distill_target="future", kind="noisy"),
        dict(vision_width=40),
        dict(vision_layers=0),
        dict(vision_width=32, init_from="shapes-latent"),
        dict(lr=float("nan")),
        dict(trajectories_per_prompt=0),
        dict(trajectories=10, trajectories_per_prompt=4),
        dict(ranking_weight=1, kind="noisy"),  # one sample per prompt: no pairs
        dict(ranking_weight=1, kind="latent", trajectories_per_prompt=4),
        dict(ranking_weight=1, kind="noisy", trajectories_per_prompt=4, trajectory_share=0),
        dict(ranking_weight=-1, kind="noisy", trajectories_per_prompt=4),
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


def test_missing_init_scorer_fails_at_once(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a shipped scorer nor a folder"):
        ScorerTrainConfig(init_from=str(tmp_path / "nowhere"))


def test_fine_tuning_starts_from_the_saved_scorer(tiny_shapes_pipeline, tmp_path):
    quiet = dict(log=lambda *_: None)
    base = train_scorer(tmp_path / "base", ScorerTrainConfig(kind="noisy", **TINY), tiny_shapes_pipeline, **quiet)
    cfg = ScorerTrainConfig(kind="noisy", init_from=str(base), lr=1e-9, **{**TINY, "steps": 1})
    tuned = train_scorer(tmp_path / "tuned", cfg, tiny_shapes_pipeline, **quiet)
    a, b = load_scorer(base), load_scorer(tuned)
    # a near-zero learning rate keeps the start point: the weights and the preview map are the saved scorer's
    assert torch.allclose(a.preview_matrix, b.preview_matrix)
    for (k, va), vb in zip(a.clip.state_dict().items(), b.clip.state_dict().values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-6), k
    with pytest.raises(ValueError, match="is a noisy scorer, not latent"):
        train_scorer(
            tmp_path / "x", ScorerTrainConfig(kind="latent", init_from=str(base), **TINY), tiny_shapes_pipeline
        )
    with pytest.raises(ValueError, match="reads preview, not latents"):
        bad = ScorerTrainConfig(kind="noisy", noisy_reads="latents", init_from=str(base), **TINY)
        train_scorer(tmp_path / "y", bad, tiny_shapes_pipeline)


def test_noisy_scorer_can_start_from_a_latent_clip(tiny_shapes_pipeline, tmp_path):
    quiet = dict(log=lambda *_: None)
    base = train_scorer(tmp_path / "base", ScorerTrainConfig(kind="latent", **TINY), tiny_shapes_pipeline, **quiet)
    cfg = ScorerTrainConfig(kind="noisy", noisy_reads="latents", init_from=str(base), lr=1e-9, **{**TINY, "steps": 1})
    tuned = load_scorer(train_scorer(tmp_path / "tuned", cfg, tiny_shapes_pipeline, **quiet))
    latent = load_scorer(base)
    assert tuned.kind == "noisy" and tuned.preview_matrix is None
    # the timestep embedding starts at zero: before training moves it, the scores are the Latent-CLIP's at any t
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square", "a green triangle"]
    with torch.no_grad():
        for t in (0, 500, 999):
            assert torch.allclose(tuned.score(z, prompts, t), latent.score(z, prompts), atol=1e-4)
    with pytest.raises(ValueError, match="is a Latent-CLIP: it reads latents, not preview"):
        bad = ScorerTrainConfig(kind="noisy", init_from=str(base), **TINY)
        train_scorer(tmp_path / "y", bad, tiny_shapes_pipeline)


def test_distillation_kl_is_zero_for_the_teachers_ranking_and_reads_only_own_columns():
    torch.manual_seed(0)
    b, k = 3, 2
    teacher = torch.randn(b, b + b * k)
    rows = torch.tensor([0, 2])
    assert distillation_kl(teacher.clone(), teacher, rows, k).abs() < 1e-6
    other = teacher.clone()
    other[1] += 5.0  # row 1 has no teacher
    other[0, 1] += 5.0  # column 1 is neither image 0's caption nor one of its hard negatives
    assert distillation_kl(other, teacher, rows, k).abs() < 1e-6
    other[0, b] += 3.0  # image 0's first hard negative
    assert distillation_kl(other, teacher, rows, k) > 0.01


@pytest.mark.parametrize("target", ["current", "final"])
def test_distilled_noisy_run_saves_a_loadable_scorer(tiny_shapes_pipeline, tmp_path, target):
    cfg = ScorerTrainConfig(kind="noisy", distill_weight=1.0, distill_target=target, **TINY)
    final = train_scorer(tmp_path, cfg, tiny_shapes_pipeline, log=lambda *_: None)
    assert load_scorer(final).kind == "noisy"
    assert "x0" in load_file(tmp_path / "trajectories.safetensors")


def test_prompted_tensors_round_trip_and_leave_no_partial_file(tmp_path, monkeypatch):
    import latentalign.checkpoint
    from latentalign.checkpoint import load_prompted_tensors, save_prompted_tensors

    tensors = {"latents": torch.randn(2, 4, 8, 8), "aligned": torch.tensor([True, False])}
    save_prompted_tensors(tmp_path / "t.safetensors", tensors, ["a red circle", "two blue squares"])
    back = load_prompted_tensors(tmp_path / "t.safetensors")
    assert back["prompts"] == ["a red circle", "two blue squares"]
    assert all(torch.equal(back[k], v) for k, v in tensors.items())

    def full_disk(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(latentalign.checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match="no space"):  # a failed write leaves the folder as it was
        save_prompted_tensors(tmp_path / "u.safetensors", tensors, ["a red circle", "two blue squares"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


def test_image_tower_size_is_settable_and_saved(tiny_shapes_pipeline, tmp_path):
    cfg = ScorerTrainConfig(kind="noisy", noisy_reads="latents", vision_width=32, vision_layers=1, **TINY)
    scorer = load_scorer(train_scorer(tmp_path, cfg, tiny_shapes_pipeline, log=lambda *_: None))
    vision = scorer.clip.config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (32, 1, 2)
    assert scorer.clip.config.text_config.hidden_size == 64  # the text tower keeps the shipped size
    with torch.no_grad():
        assert scorer.score(torch.randn(2, 4, 8, 8), ["a red circle", "a blue square"], 500).shape == (2,)


def test_mixed_pairs_are_accepted_and_rejected_samples_of_one_prompt():
    prompts = ["a", "a", "a", "b", "b", "c"]
    aligned = torch.tensor([True, False, False, True, True, False])
    assert sorted(map(tuple, mixed_pairs(prompts, aligned).tolist())) == [(0, 1), (0, 2)]
    assert mixed_pairs(["a", "b"], torch.tensor([True, False])).shape == (0, 2)


def test_ranking_loss_prefers_the_accepted_sample():
    pairs = torch.tensor([[0, 1]])
    assert ranking_loss(torch.tensor([1.0, 1.0]), pairs).item() == pytest.approx(F.softplus(torch.tensor(0.0)).item())
    assert ranking_loss(torch.tensor([3.0, 0.0]), pairs) < ranking_loss(torch.tensor([0.0, 3.0]), pairs)


def test_ranking_run_pairs_accepted_and_rejected_samples_of_one_prompt(tiny_shapes_pipeline, tmp_path, monkeypatch):
    # random weights draw nothing the checker accepts: alternate the verdicts so every prompt has both kinds
    verdicts = iter([True, False] * 8)
    monkeypatch.setattr(ts, "check", lambda image, prompt: type("V", (), {"ok": next(verdicts)})())
    seen = []
    real_forward, real_ranking = ContrastiveLoss.forward, ts.ranking_loss

    def forward(self, image, text, captions, aligned, *args):
        seen.append((list(captions), aligned.clone()))
        return real_forward(self, image, text, captions, aligned, *args)

    def ranking(own, pairs):
        seen[-1] += (pairs.clone(),)
        return real_ranking(own, pairs)

    monkeypatch.setattr(ContrastiveLoss, "forward", forward)
    monkeypatch.setattr(ts, "ranking_loss", ranking)
    cfg = ScorerTrainConfig(kind="noisy", trajectories_per_prompt=4, ranking_weight=1.0, **TINY)
    final = train_scorer(tmp_path, cfg, tiny_shapes_pipeline, log=lambda *_: None)
    assert load_scorer(final).kind == "noisy"
    traj = ts.load_prompted_tensors(tmp_path / "trajectories.safetensors")
    assert all(len(set(traj["prompts"][i : i + 4])) == 1 for i in range(0, 8, 4))
    assert len(seen) == cfg.steps
    for captions, aligned, pairs in seen:
        assert len(pairs) == TINY["batch"] // 4  # half the batch is trajectories, in pairs
        for a, r in pairs.tolist():
            assert captions[a] == captions[r] and aligned[a] and not aligned[r]


@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_clean_scorers_learn_from_the_generators_final_samples(kind, tiny_shapes_pipeline, tmp_path, monkeypatch):
    verdicts = iter([True, False] * 8)  # every prompt gets an accepted and a rejected sample
    monkeypatch.setattr(ts, "check", lambda image, prompt: type("V", (), {"ok": next(verdicts)})())
    seen = []
    real_forward = ContrastiveLoss.forward

    def forward(self, image, text, captions, aligned, *args):
        seen.append((list(captions), aligned.clone()))
        return real_forward(self, image, text, captions, aligned, *args)

    monkeypatch.setattr(ContrastiveLoss, "forward", forward)
    cfg = ScorerTrainConfig(kind=kind, trajectory_share=0.5, trajectories_per_prompt=4, ranking_weight=1.0, **TINY)
    assert cfg.trajectory_share == 0.5 and ScorerTrainConfig(kind=kind).trajectory_share == 0.0
    final = train_scorer(tmp_path, cfg, tiny_shapes_pipeline, log=lambda *_: None)
    assert load_scorer(final, vae=tiny_shapes_pipeline.vae).kind == kind
    traj = ts.load_prompted_tensors(tmp_path / "trajectories.safetensors")
    assert traj["final"].shape == traj["latents"][:, 0].shape
    for captions, aligned in seen:  # the generator's rejected samples are in every batch, as negatives
        assert (~aligned).sum() == TINY["batch"] // 4  # half the batch is samples, in (accepted, rejected) pairs
        assert {c for c, ok in zip(captions, aligned.tolist(), strict=True) if not ok} <= set(traj["prompts"])


@pytest.mark.parametrize("renoise", [0.0, 1.0])
def test_renoise_shows_trajectory_samples_under_fresh_noise(renoise, tiny_shapes_pipeline, tmp_path, monkeypatch):
    verdicts = iter([True, False] * 8)
    monkeypatch.setattr(ts, "check", lambda image, prompt: type("V", (), {"ok": next(verdicts)})())
    seen = []
    real_forward = ts._Pair.forward

    def forward(self, x, t, captions):
        seen.append(x.detach().clone())
        return real_forward(self, x, t, captions)

    monkeypatch.setattr(ts._Pair, "forward", forward)
    cfg = ScorerTrainConfig(kind="noisy", trajectories_per_prompt=4, ranking_weight=1.0, renoise=renoise, **TINY)
    train_scorer(tmp_path, cfg, tiny_shapes_pipeline, log=lambda *_: None)
    stored = ts.load_prompted_tensors(tmp_path / "trajectories.safetensors")["latents"].flatten(0, 1)
    recorded = [any(torch.equal(row, z) for z in stored) for x in seen for row in x]
    # half of each batch is trajectory samples: as recorded without renoise, none of them with renoise 1
    assert sum(recorded) == (len(recorded) // 2 if renoise == 0 else 0)


@pytest.mark.parametrize(
    "bad", [dict(renoise=0.5), dict(renoise=2, kind="noisy"), dict(kind="noisy", renoise=0.5, trajectory_share=0)]
)
def test_renoise_needs_noisy_trajectories(bad):
    with pytest.raises(ValueError, match="renoise"):
        ScorerTrainConfig(**bad)


def test_reward_samples_are_the_rewards_own_noise_optimisation_iterates(tiny_shapes_pipeline, tmp_path):
    quiet = dict(log=lambda *_: None)
    init = train_scorer(tmp_path / "init", ScorerTrainConfig(kind="latent", **TINY), tiny_shapes_pipeline, **quiet)
    cfg = ScorerTrainConfig(
        kind="latent", init_from=str(init), trajectory_share=0.5, reward_samples=2, reward_iterations=2, **TINY
    )
    train_scorer(tmp_path / "run", cfg, tiny_shapes_pipeline, **quiet)
    data = ts.load_prompted_tensors(tmp_path / "run/reward_samples.safetensors")
    assert data["iteration"].tolist() == [1, 2, 1, 2]  # every iterate after the plain sample, run after run
    assert data["prompts"][0] == data["prompts"][1] and data["prompts"][2] == data["prompts"][3]
    assert data["final"].shape == (4, 4, 8, 8) and data["aligned"].dtype == torch.bool
    # they are the iterates noise optimisation with that scorer as the reward reaches from the same seed
    from latentalign import generate
    from latentalign.methods import NoiseOptimization, Reward

    seen = []
    stage = NoiseOptimization(
        iterations=2, rewards=[Reward(load_scorer(init))], on_iterate=lambda info: seen.append(info["latents"])
    )
    generate(tiny_shapes_pipeline, data["prompts"][0], method=stage, seed=20_000_000)
    assert torch.allclose(torch.cat(seen[1:]), data["final"][:2], atol=1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        dict(kind="latent", reward_samples=4, trajectory_share=0.5),  # no init_from: no reward
        dict(kind="latent", reward_samples=4, init_from="shapes-latent"),  # trajectory_share 0
        dict(kind="noisy", reward_samples=4, init_from="shapes-noisy"),
        dict(kind="latent", reward_iterations=0),
    ],
)
def test_reward_samples_need_a_reward_and_clean_samples(bad):
    with pytest.raises(ValueError, match="reward_"):
        ScorerTrainConfig(**bad)
