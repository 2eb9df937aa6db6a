"""Token-level feedback and the paper-style noise projection on tiny components: the checker's word verdicts agree
with its verdict, token judges refuse bad answers, the judge's word head round-trips, the noise reward model's
recording resumes and reads the generation itself on a one-step pipeline, the quasi-DPO loss has the properties the
recipe relies on, and the paper recipe trains, resumes and refuses what it cannot use before any work."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from latentalign import generate
from latentalign.adapters import Denoiser
from latentalign.bench import plan
from latentalign.cli import main
from latentalign.methods import NoiseProjection, load_projector
from latentalign.scorers import build_shapes_judge, build_shapes_scorer, load_scorer, save_scorer
from latentalign.scorers.noise_reward import NoiseRewardModel, load_noise_reward
from latentalign.scorers.token_judges import (
    CLIPTokenJudge,
    QuestionTokenJudge,
    ShapesTokenJudge,
    content_words,
    scored_word_mask,
)
from latentalign.training.noise_reward import (
    NoiseRewardTrainConfig,
    feedback_labels,
    fidelity,
    record_feedback,
    train_noise_reward,
)
from latentalign.training.projector import ProjectorTrainConfig, quasi_dpo_loss, train_projector
from latentalign.world import check, render, suite, word_verdicts


def quiet(*_):
    pass


def test_word_verdicts_pass_exactly_when_the_checker_does():
    rng = random.Random(3)
    prompts = [p for name in ("single_object", "two_objects", "relation", "counting") for p in suite(name, "train")]
    failed = 0
    for i in range(160):
        prompt = rng.choice(prompts)
        image = render(prompt if i % 2 else rng.choice(prompts), seed=i)
        verdicts, clean = word_verdicts(image, prompt)
        words = prompt.split()
        assert [v.word for v in verdicts] == [w for w in words if w != "and"]
        assert check(image, prompt).ok == (clean and all(v.ok for v in verdicts))
        failed += not check(image, prompt).ok
    assert 20 < failed < 140  # both kinds were seen
    image = render("a red circle left of a blue square", seed=1)
    verdicts, clean = word_verdicts(image, "a red square left of a blue circle")
    by_role = {(v.word, v.role): v.ok for v in verdicts}
    assert by_role[("red", "colour")] and by_role[("square", "shape")]  # the words are honoured by stray objects
    assert not by_role[("left", "relation")] and not by_role[("a", "count")] and clean is False


def test_token_judges_and_their_labels():
    image = render("a red circle", seed=0)
    shapes = ShapesTokenJudge()([image, image], ["a red circle", "a blue circle"])
    assert shapes[0].words == {0: 1.0, 1: 1.0, 2: 1.0} and shapes[0].image == 1.0
    assert shapes[1].words[1] == 0.0 and shapes[1].image == 0.0
    asked = QuestionTokenJudge(lambda im, prompt, word: 9 if word != "blue" else 3)([image], ["a blue circle"])[0]
    assert asked.words == {1: 3 / 9, 2: 1.0} and asked.image == 3 / 9  # "a" is a stop word
    with pytest.raises(ValueError, match="outside"):
        QuestionTokenJudge(lambda *a: 10)([image], ["a red circle"])
    with pytest.raises(ValueError, match="callable"):
        QuestionTokenJudge("not a function")
    with pytest.raises(ValueError, match="pixel"):
        CLIPTokenJudge(build_shapes_scorer("latent", 0.5))
    clip = CLIPTokenJudge(build_shapes_scorer("pixel", 0.5).eval())([image], ["a red circle left of a blue square"])
    assert set(clip[0].words) == set(content_words("a red circle left of a blue square")) == {1, 2, 3, 6, 7}
    assert all(0 <= v <= 1 for v in clip[0].words.values())
    words, img = feedback_labels(shapes)
    assert words.shape == (2, 16) and words[0, :3].tolist() == [1, 1, 1] and (words[0, 3:] == -1).all()
    assert img.tolist() == [1.0, 0.0]
    mask = scored_word_mask(["two red circles and a blue square", "a big red ball"], 7)
    assert mask[0].tolist() == [1, 1, 1, 0, 1, 1, 1] and mask[1].tolist() == [0, 1, 1, 1, 0, 0, 0]


def test_the_word_head_reads_each_word_and_round_trips(tiny_shapes_pipeline, tmp_path):
    judge = build_shapes_judge(tiny_shapes_pipeline, seed=2).add_word_head()
    with torch.no_grad():
        judge.word_head[1].weight.normal_()
    x = torch.randn(2, 4, 8, 8)
    prompts = ["a red circle", "two blue squares and a green triangle"]
    words, image = judge.word_logits(x, prompts)
    assert words.shape == (2, 7) and (words[0, 3:] == 0).all() and (words[0, :3] != 0).all()
    single, _ = judge.word_logits(x[1:], prompts[1:])
    torch.testing.assert_close(single[0], words[1], atol=1e-5, rtol=1e-5)  # batched == single
    save_scorer(judge, tmp_path / "judge")
    loaded = load_scorer(tmp_path / "judge")
    assert loaded.architecture["tokens"] == 1
    torch.testing.assert_close(loaded.word_logits(x, prompts)[0], words)
    with pytest.raises(ValueError, match="word head"):
        build_shapes_judge(tiny_shapes_pipeline).word_logits(x, prompts)


@pytest.fixture(scope="module")
def start_judge(tiny_shapes_pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("start") / "judge"
    save_scorer(build_shapes_judge(tiny_shapes_pipeline, seed=3), folder)
    return folder


TINY_REWARD = dict(prompts=4, seeds_per_prompt=2, chunk_prompts=2, steps=4, batch=4, checkpoint_every=2, warmup=1)


def test_feedback_recording_resumes_and_a_one_step_preview_is_the_generation(
    tiny_shapes_pipeline, start_judge, tmp_path
):
    reward = NoiseRewardModel(load_scorer(start_judge), preview_steps=3, guidance_scale=2.0)
    prompts = ["a red circle", "a blue square", "two green triangles"]
    data = record_feedback(tiny_shapes_pipeline, reward, prompts, 2, tmp_path, seed_base=7, chunk_prompts=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk00000.safetensors", "chunk00001.safetensors"]
    assert data["seeds"].tolist() == list(range(7, 13)) and data["preview"].shape == (6, 4, 8, 8)
    plain = generate(tiny_shapes_pipeline, [p for p in prompts for _ in range(2)], seed=list(range(7, 13)))
    torch.testing.assert_close(data["preview"], plain.latents.float(), atol=1e-5, rtol=1e-4)  # 3 of 3 steps
    rows = [p for p in prompts for _ in range(2)]
    expected = [float(check(im, p).ok) for im, p in zip(plain.images, rows, strict=True)]
    assert data["image"].tolist() == expected
    (tmp_path / "chunk00000.safetensors").unlink()
    again = record_feedback(tiny_shapes_pipeline, reward, prompts, 2, tmp_path, seed_base=7, chunk_prompts=2)
    assert torch.equal(again["preview"], data["preview"]) and torch.equal(again["words"], data["words"])
    report = fidelity(reward, data)
    assert report["rows"] == 6 and report["scored_words"] == int((data["words"] >= 0).sum())


def test_quasi_dpo_loss_leaves_won_words_alone_and_rewards_margins():
    base = torch.tensor([[8.0, -8.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    img = torch.zeros(1)
    at_base = quasi_dpo_loss(base.clone(), img, base, img, mask, 1.0, 0.0)
    better = quasi_dpo_loss(base + torch.tensor([[0.0, 3.0, 0.0]]), img, base, img, mask, 1.0, 0.0)
    assert better < at_base
    only_won = quasi_dpo_loss(base + torch.tensor([[3.0, 0.0, 5.0]]), img, base, img, mask, 1.0, 0.0)
    torch.testing.assert_close(only_won, at_base, atol=1e-3, rtol=0)  # a won word (p ~ 1) and an unscored one: ~0
    words = base.clone().requires_grad_(True)
    quasi_dpo_loss(words, img, base, img, mask, 1.0, 0.0).sum().backward()
    assert words.grad[0, 1] < 0 and words.grad[0, 2] == 0 and abs(words.grad[0, 0]) < 1e-3


@pytest.fixture(scope="module")
def reward_run(tiny_shapes_pipeline, start_judge, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward")
    cfg = NoiseRewardTrainConfig(start=str(start_judge), **TINY_REWARD)
    return out, cfg, train_noise_reward(out, cfg, tiny_shapes_pipeline, log=quiet)


def test_the_noise_reward_trains_resumes_and_records_its_fidelity(
    tiny_shapes_pipeline, reward_run, tmp_path, monkeypatch
):
    import latentalign.training.noise_reward as nr

    out, cfg, folder = reward_run
    reward = load_noise_reward(folder)
    record = json.loads((folder / "noise_reward.json").read_text())
    assert (
        reward.preview_steps == 4
        and record["training"]["step"] == 4
        and "word_auroc" in record["training"]["validation"]
    )
    assert not any(p.requires_grad for p in reward.parameters())
    real_save = nr.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    work = tmp_path / "again"
    work.mkdir()
    (work / "data").symlink_to(out / "data")  # the same recorded feedback
    monkeypatch.setattr(nr, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_noise_reward(work, cfg, tiny_shapes_pipeline, log=quiet)
    monkeypatch.setattr(nr, "save_checkpoint", real_save)
    train_noise_reward(work, cfg, tiny_shapes_pipeline, log=quiet)
    ref = load_file(str(folder / "judge" / "judge.safetensors"))
    got = load_file(str(work / "noise_reward" / "judge" / "judge.safetensors"))
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="config"):
        train_noise_reward(work, replace(cfg, steps=6), tiny_shapes_pipeline, log=quiet)
    for bad in ({"steps": 0}, {"validation_share": 0.6}, {"lr": float("inf")}, {"preview_steps": 0}):
        with pytest.raises(ValueError):
            NoiseRewardTrainConfig(**bad)


TINY_PAPER = ProjectorTrainConfig(
    recipe="paper", steps=5, warmup_steps=2, batch=2, warmup=1, width=16, layers=1, heads=2, prompt_pool=8,
    checkpoint_every=5, kl_weight=0.001,
)  # fmt: skip


def test_the_paper_recipe_warms_up_fine_tunes_and_refuses_mismatches(tiny_shapes_pipeline, reward_run, tmp_path):
    _, _, folder = reward_run
    reward = load_noise_reward(folder)
    warm = train_projector(tmp_path / "warm", replace(TINY_PAPER, steps=3, warmup_steps=2, init_scale=0.3),
                           tiny_shapes_pipeline, reward, log=quiet)  # fmt: skip
    log = json.loads((warm / "projector.json").read_text())["training"]
    assert log["config"]["recipe"] == "paper" and log["preview_steps"] == 4
    trained = train_projector(tmp_path / "paper", TINY_PAPER, tiny_shapes_pipeline, reward, log=quiet)
    projector = load_projector(trained)
    r = generate(tiny_shapes_pipeline, ["a red circle"], seed=[0], method=NoiseProjection(projector=projector))
    assert torch.isfinite(r.latents).all() and r.cost.projector_calls == 1
    with pytest.raises(ValueError, match="noise reward model"):
        train_projector(tmp_path / "x", TINY_PAPER, tiny_shapes_pipeline, build_shapes_scorer("latent", 0.5))
    other = NoiseRewardModel(reward.judge, reward.preview_steps, guidance_scale=7.0)
    with pytest.raises(ValueError, match="guidance"):
        train_projector(tmp_path / "y", TINY_PAPER, tiny_shapes_pipeline, other, log=quiet)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "checkpoint").exists()
    for bad in ({"recipe": "dpo"}, {"recipe": "paper", "warmup_steps": 1500}, {"dpo_beta": -1.0}):
        with pytest.raises(ValueError):
            ProjectorTrainConfig(**bad)
    for argv in (
        ["--recipe", "paper"],  # no reward model
        ["--recipe", "paper", "--noise-reward", str(folder), "--scorer", "shapes-latent"],  # a flag it would ignore
        ["--warmup-steps", "5"],  # the reward recipe has no warm-up
        ["--noise-reward", str(folder)],
    ):
        assert main(["train", "projector", *argv, "--out", str(tmp_path / "cli")]) == 2
    assert not (tmp_path / "cli").exists()


def test_the_paper_recipe_resumes_to_the_same_weights(tiny_shapes_pipeline, reward_run, tmp_path, monkeypatch):
    import latentalign.training.projector as projector_training

    reward = load_noise_reward(reward_run[2])
    cfg = replace(TINY_PAPER, checkpoint_every=3)
    ref = load_file(str(train_projector(tmp_path / "ref", cfg, tiny_shapes_pipeline, reward, log=quiet)
                        / "projector.safetensors"))  # fmt: skip
    real_save = projector_training.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(projector_training, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):  # stopped after step 3: warm-up done, quasi-DPO begun
        train_projector(tmp_path / "run", cfg, tiny_shapes_pipeline, reward, log=quiet)
    monkeypatch.setattr(projector_training, "save_checkpoint", real_save)
    got = load_file(str(train_projector(tmp_path / "run", cfg, tiny_shapes_pipeline, reward, log=quiet)
                        / "projector.safetensors"))  # fmt: skip
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="config"):  # another reward model is another run
        train_projector(tmp_path / "run", cfg, tiny_shapes_pipeline, reward, scorer_name="other", log=quiet)


def test_bench_plans_new_seeds_from_a_seed_base():
    jobs = plan(["counting"], 2, limit_prompts=3, seed_base=80_000_000)
    assert sorted({s for _, _, s in jobs}) == [80_000_000, 80_000_001] and len(jobs) == 6
    assert [p for _, p, _ in jobs] == [p for _, p, _ in plan(["counting"], 2, limit_prompts=3)]
    with pytest.raises(ValueError, match="seed_base"):
        plan(["counting"], 2, seed_base=-1)


def test_denoiser_noise_is_the_seeds_noise(tiny_shapes_pipeline):
    den = Denoiser(tiny_shapes_pipeline)
    assert torch.equal(den.initial_noise([5]), den.initial_noise([4, 5])[1:])
