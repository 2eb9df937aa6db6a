"""The latent cross-encoder judge: the scorer contract, save/load, and its trainer on tiny components."""

from __future__ import annotations

import json

import pytest
import torch

from latentalign.scorers import LatentJudge, build_shapes_judge, load_scorer, save_scorer
from latentalign.scorers.judge import check_architecture, judge_for_pipeline
from latentalign.training.judge import (
    JudgeTrainConfig,
    judge_labels,
    judge_loss,
    prompt_pairs,
    resolve_judge,
    train_judge,
    within_prompt_auroc,
)

PROMPT = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def judge(tiny_shapes_pipeline):
    return build_shapes_judge(tiny_shapes_pipeline, seed=1)


def test_judge_scores_are_deterministic_batched_equals_single_and_read_t(judge):
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 250, 500, 999])
    prompts = [PROMPT, "a green square", PROMPT, "two yellow circles"]
    with torch.no_grad():
        batched = judge.score(z, prompts, t)
        single = torch.cat([judge.score(z[i : i + 1], prompts[i], t[i]) for i in range(4)])
        again = judge.score(z, prompts, t)
    assert batched.shape == (4,) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    assert torch.equal(batched, again)
    with torch.no_grad():  # t=None reads clean latents, as t=0
        torch.testing.assert_close(judge.score(z, PROMPT), judge.score(z, PROMPT, 0))


def test_prompts_of_several_lengths_read_as_one_pass_per_length_equal_the_masked_pass(tiny_shapes_pipeline):
    judge = build_shapes_judge(tiny_shapes_pipeline, seed=1).add_word_head().eval()
    z = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 250, 500, 750, 999])
    prompts = [PROMPT, "a green square", PROMPT, "a red circle above a square", "a green square"]  # three lengths
    lengths = [len(judge.tokenizer(p).input_ids) for p in prompts]
    assert len(set(lengths)) == 3
    with torch.no_grad():
        grouped, grouped_heads = judge(z, prompts, t.float(), dense=True)
        judge.train()  # training keeps one masked pass (no dropout: the same function)
        masked, masked_heads = judge(z, prompts, t.float(), dense=True)
    torch.testing.assert_close(grouped, masked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grouped_heads["objects"], masked_heads["objects"], rtol=1e-4, atol=1e-4)
    for row, length in enumerate(lengths):  # every real token's log-odds (word_logits masks the padding)
        torch.testing.assert_close(grouped_heads["tokens"][row, :length], masked_heads["tokens"][row, :length])
    judge.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the groups' outputs keep autocast's dtype
        assert torch.isfinite(judge(z, prompts, t.float())).all()


def test_judge_reads_the_prompt_and_is_differentiable_in_the_latents(judge):
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    scores = judge.score(z, [PROMPT, "three purple diamonds"])
    scores.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with torch.no_grad():
        assert not torch.equal(judge.score(z[:1], PROMPT), judge.score(z[:1], "three purple diamonds"))
    assert all(not p.requires_grad for p in judge.text_encoder.parameters())  # the pipeline's text encoder, frozen


def test_judge_save_load_round_trip_by_folder(judge, tmp_path):
    save_scorer(judge, tmp_path / "judge")
    loaded = load_scorer(tmp_path / "judge")
    assert isinstance(loaded, LatentJudge) and loaded.architecture == judge.architecture
    z = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.score(z, PROMPT, 400), judge.score(z, PROMPT, 400))
    settings = json.loads((tmp_path / "judge" / "latentalign_scorer.json").read_text())
    assert settings["kind"] == "judge" and (tmp_path / "judge" / "judge.safetensors").exists()


def test_judge_refuses_bad_input_and_architectures(judge, tmp_path):
    with pytest.raises(ValueError, match="4-channel"):
        judge.score(torch.randn(1, 3, 8, 8), PROMPT)
    with pytest.raises(ValueError, match="timesteps"):
        judge.score(torch.randn(2, 4, 8, 8), PROMPT, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="prompts"):
        judge.score(torch.randn(2, 4, 8, 8), [PROMPT] * 3)
    with pytest.raises(ValueError, match="unknown judge architecture"):
        check_architecture({"depth": 2})
    with pytest.raises(ValueError, match="multiple"):
        check_architecture({"width": 30, "heads": 4})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "latentalign_scorer.json").write_text(json.dumps({"kind": "judge"}))
    with pytest.raises(ValueError, match="could not be loaded"):
        load_scorer(tmp_path / "broken")


def test_judge_for_another_pipeline_reads_its_latents_with_patches(tiny_sd_pipeline):
    judge = judge_for_pipeline(tiny_sd_pipeline, {"patch_size": 2, "width": 32, "heads": 2, "layers": 1})
    assert judge.text_encoder is not tiny_sd_pipeline.text_encoder  # a copy: the pipeline's stays untouched
    with torch.no_grad():
        assert judge.score(torch.randn(2, 4, 8, 8), "a red ball on grass", 500).shape == (2,)
    with pytest.raises(ValueError, match="patches"):
        judge.score(torch.randn(1, 4, 7, 7), "a red ball")


def test_within_prompt_pairs_ranking_and_auroc():
    prompts = ["a", "a", "a", "b", "b"]
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    assert prompt_pairs(prompts, labels, list(range(5))).tolist() == [[0, 1], [0, 2]]
    assert within_prompt_auroc([0.9, 0.1, 0.5, 0.3, 0.2], labels.tolist(), prompts) == 1.0  # "b" has one kind only
    assert within_prompt_auroc([0.1, 0.9, 0.1, 0.3, 0.2], labels.tolist(), prompts) == 0.25
    right = judge_loss(torch.tensor([3.0, -3.0]), torch.tensor([1.0, 0.0]), 2, 1.0)
    wrong = judge_loss(torch.tensor([-3.0, 3.0]), torch.tensor([1.0, 0.0]), 2, 1.0)
    assert right["ranking"] < 0.1 < wrong["ranking"] and right["loss"] < wrong["loss"]
    flipped = judge_loss(torch.tensor([-3.0, 3.0]), torch.tensor([0.0, 1.0]), 2, 1.0)  # the better one second
    torch.testing.assert_close(flipped["ranking"], right["ranking"])
    assert "ranking" not in judge_loss(torch.zeros(2), torch.ones(2), 2, 1.0)  # tied labels rank nothing


def test_judges_of_the_wrong_shape_fail_before_any_work(tiny_shapes_pipeline, tmp_path):
    images = [None, None]
    with pytest.raises(ValueError, match="one per image"):
        judge_labels(lambda ims, ps: [0.5], images, ["a", "b"])
    with pytest.raises(ValueError, match="one per image"):
        judge_labels(lambda ims, ps: [[0.5, 0.5], [0.1, 0.2]], images, ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        judge_labels(lambda ims, ps: [2.0, float("nan")], images, ["a", "b"])
    bad = tmp_path / "bad_judge.py"
    bad.write_text("def judge(images, prompts):\n    return [1.0]\n")
    out = tmp_path / "run"
    cfg = JudgeTrainConfig(judge=f"{bad}:judge", prompts=2, seeds_per_prompt=2, steps=1, batch=4)
    with pytest.raises(ValueError, match="one per image"):
        train_judge(out, cfg, tiny_shapes_pipeline)
    assert not out.exists()  # refused before recording anything
    with pytest.raises(ValueError, match="no callable"):
        resolve_judge(f"{bad}:missing")
    with pytest.raises(ValueError, match="held-out"):
        JudgeTrainConfig(split="heldout")
    with pytest.raises(ValueError, match="seeds_per_prompt"):
        JudgeTrainConfig(seeds_per_prompt=1)


def test_train_judge_refuses_to_ship_another_pipelines_judge_before_any_work(tmp_path, capsys):
    from latentalign.cli import main

    out = tmp_path / "one_step_judge"
    assert main(["train", "judge", "--model", "shapes-one-step", "--ship", "--out", str(out)]) == 2
    assert "'shapes-one-step' has none" in capsys.readouterr().err and not out.exists()


def test_training_with_a_fake_judge_separates_two_synthetic_classes(tiny_shapes_pipeline, tmp_path):
    # the fake pixel judge accepts the brighter half of each batch it sees: a property of the image, which the
    # latent judge can only learn by reading the latents
    fake = tmp_path / "bright.py"
    fake.write_text(
        "import numpy as np\n"
        "def judge(images, prompts):\n"
        "    means = [np.asarray(im, dtype=float).mean() for im in images]\n"
        "    mid = float(np.median(means))\n"
        "    return [float(m > mid) for m in means]\n"
    )
    cfg = JudgeTrainConfig(
        judge=f"{fake}:judge", towers=None, prompts=8, seeds_per_prompt=8, steps=80, batch=32, lr=2e-3,
        final_share=1.0, validation_share=0.0, checkpoint_every=80,
    )  # fmt: skip
    folder = train_judge(tmp_path / "run", cfg, tiny_shapes_pipeline, log=lambda *a: None)
    judge = load_scorer(folder)
    from latentalign.checkpoint import load_prompted_tensors

    data = [load_prompted_tensors(p) for p in sorted((tmp_path / "run" / "data").glob("chunk*.safetensors"))]
    final = torch.cat([d["final"] for d in data])
    labels = torch.cat([d["labels"] for d in data])
    prompts = [p for d in data for p in d["prompts"]]
    with torch.no_grad():
        scores = judge.score(final, prompts)
    assert within_prompt_auroc(scores.tolist(), labels.tolist(), prompts) > 0.8
    report = json.loads((folder / "training.json").read_text())
    assert report["trajectories"] == 64 and report["within_prompt_pairs"] > 0


def test_a_judge_on_latent_clip_towers_adds_to_its_clipscore_and_round_trips(tmp_path):
    from latentalign.scorers import build_shapes_scorer
    from latentalign.scorers.judge import judge_from_latent_clip

    latent_clip = build_shapes_scorer("latent", 0.5, seed=3)
    judge = judge_from_latent_clip(latent_clip, {"width": 32, "layers": 1, "heads": 2, "foresight": 4}).eval()
    assert judge.towers is not latent_clip.clip  # a copy: fine-tuning the judge leaves the scorer as it was
    z = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        torch.nn.init.zeros_(judge.head[1].weight)
        torch.nn.init.zeros_(judge.head[1].bias)
        # a silent head leaves the prior: 10 x Latent-CLIP's cosine at any t (the timestep starts as a no-op)
        torch.testing.assert_close(judge.score(z, PROMPT, 700), 10 * latent_clip.score(z, PROMPT), rtol=1e-4, atol=1e-4)
        logits, heads = judge(z, [PROMPT] * 3, torch.zeros(3), dense=True)
    picture = heads["foresight"]
    assert picture.shape == (3, 3, 32, 32) and 0 <= picture.min() and picture.max() <= 1
    save_scorer(judge, tmp_path / "towers_judge")
    loaded = load_scorer(tmp_path / "towers_judge")
    assert loaded.towers is not None and (tmp_path / "towers_judge" / "towers").is_dir()
    with torch.no_grad():
        # the same weights (from_pretrained's towers may pick other kernels: equal to float rounding)
        torch.testing.assert_close(loaded.score(z, PROMPT, 300), judge.score(z, PROMPT, 300), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="8x8"):
        judge.score(torch.randn(1, 4, 16, 16), PROMPT)


def test_object_maps_and_their_verdict_are_the_checkers_reading():
    import numpy as np

    from latentalign.training.judge import object_loss, object_maps
    from latentalign.world import check, detect
    from latentalign.world.checker import OBJECT_CLASSES, map_verdict, object_map
    from latentalign.world.grammar import COLOURS, SHAPES
    from latentalign.world.render import render, to_array

    prompt = "a red circle left of a blue square"
    image = to_array(render(prompt, seed=0))
    detections = detect(image)
    classes = object_map(image)
    assert set(np.unique(classes).tolist()) == {0} | {
        1 + COLOURS.index(d.colour) * len(SHAPES) + SHAPES.index(d.shape) for d in detections
    }
    # the clause rules read the map as the checker reads the image, including a relation's direction
    assert map_verdict(classes, prompt) == check(image, prompt).ok
    assert not map_verdict(classes, "a red circle right of a blue square")
    assert not map_verdict(np.zeros_like(classes), prompt)
    maps = object_maps(torch.from_numpy(image).float().permute(2, 0, 1)[None] / 255)
    assert maps.shape == (1, 32, 32) and torch.equal(maps[0].long(), torch.from_numpy(classes))
    exact = torch.nn.functional.one_hot(maps.long(), OBJECT_CLASSES).permute(0, 3, 1, 2).float() * 20
    assert object_loss(exact, maps) < 1e-3  # per pixel at full resolution
    assert object_loss(torch.zeros(1, OBJECT_CLASSES, 8, 8), maps) > 1  # pooled shares on a coarser head


def test_a_judge_trains_for_any_pipeline_from_a_prompt_file_and_your_judge(tiny_sd_pipeline, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball on grass\na blue dog\n\na cat on grass\n")
    fake = tmp_path / "half.py"
    fake.write_text("def judge(images, prompts):\n    return [float(i % 2) for i in range(len(images))]\n")
    cfg = JudgeTrainConfig(
        judge=f"{fake}:judge", prompt_file=str(prompts), towers=None, prompts=3, seeds_per_prompt=2, chunk_prompts=2,
        steps=2, batch=4, validation_share=0.0, checkpoint_every=2,
    )  # fmt: skip
    folder = train_judge(tmp_path / "run", cfg, tiny_sd_pipeline, log=lambda *a: None)
    judge = load_scorer(folder)
    assert judge.towers is None and judge.architecture["verdict_margin"] == 0
    assert len(list((tmp_path / "run" / "data").glob("chunk*.safetensors"))) == 2  # 3 prompts in chunks of 2
    with torch.no_grad():
        assert judge.score(torch.randn(2, 4, 8, 8), "a red ball", 100).shape == (2,)
    with pytest.raises(ValueError, match="prompt_file"):
        train_judge(tmp_path / "run2", JudgeTrainConfig(towers=None), tiny_sd_pipeline)  # the checker is Shapes-only


def test_what_a_judge_reads_mid_sampling_is_its_space_and_round_trips(tiny_shapes_pipeline, judge, tmp_path):
    from latentalign import generate
    from latentalign.methods import EarlyExit
    from latentalign.methods.best_of_n import SEED_STRIDE
    from latentalign.trajectories import record_trajectories

    assert judge.space == "noisy_latents" and judge.reading("noisy_latents") is judge
    clean = judge.reading("latents")
    assert clean.space == "latents" and judge.space == "noisy_latents"  # a view sharing the weights
    assert clean.blocks is judge.blocks
    with pytest.raises(ValueError, match="noisy_latents' or 'latents"):
        judge.reading("pixels")
    save_scorer(clean, tmp_path / "clean")
    assert load_scorer(tmp_path / "clean").space == "latents"

    seen = []
    for view in (judge, clean):
        original = view.score

        def spy(x, prompts, t=None, original=original, view=view):
            seen.append((view.space, x.detach().clone(), t))
            return original(x, prompts, t)

        object.__setattr__(view, "score", spy)
    n, k, seed = 4, 3, 5
    for view in (judge, clean):
        stage = EarlyExit(scorer=view, n=n, prune_steps=(k,), keep=(2,))
        generate(tiny_shapes_pipeline, PROMPT, method=stage, seed=seed, num_inference_steps=6)
    traj = record_trajectories(
        tiny_shapes_pipeline, [PROMPT] * n, [seed + i * SEED_STRIDE for i in range(n)], num_inference_steps=6,
        progress=False,
    )  # fmt: skip
    noisy_prune, clean_prune = seen[0], next(s for s in seen if s[0] == "latents")
    # z_t after k steps with its timestep, against the x0 prediction the k-th evaluation made, without one
    torch.testing.assert_close(noisy_prune[1], traj.latents[:, k], rtol=1e-4, atol=1e-4)
    assert int(torch.as_tensor(noisy_prune[2]).flatten()[0]) == int(traj.timesteps[k])
    torch.testing.assert_close(clean_prune[1], traj.x0[:, k - 1], rtol=1e-4, atol=1e-4)
    assert clean_prune[2] is None


def test_vectorised_map_regions_equal_the_checkers_connected_components():
    import numpy as np

    from latentalign.world.checker import (
        COLOURS,
        IMAGE_SIZE,
        MIN_AREA,
        SHAPES,
        _components,
        batch_map_detections,
        map_component_labels,
        map_detections,
        map_verdict,
        map_verdicts,
    )

    def by_search(classes):  # the checker's breadth-first 8-connected components, class by class
        scale = IMAGE_SIZE / classes.shape[0]
        out = []
        for c in np.unique(classes):
            for comp in _components(classes == c) if c else []:
                if len(comp) * scale * scale >= MIN_AREA:
                    ys, xs = np.array(comp).T
                    out.append((COLOURS[(c - 1) // len(SHAPES)], SHAPES[(c - 1) % len(SHAPES)],
                                (xs.mean() + 0.5) * scale - 0.5, (ys.mean() + 0.5) * scale - 0.5,
                                round(len(comp) * scale * scale)))  # fmt: skip
        return out

    rng = np.random.default_rng(0)
    maps = []
    for _ in range(12):  # blobs, speckle, snakes and touching regions of different classes
        m = np.zeros((32, 32), dtype=np.int64)
        for _ in range(rng.integers(1, 6)):
            y, x, r = *rng.integers(0, 32, 2), rng.integers(1, 8)
            m[max(0, y - r) : y + r, max(0, x - r) : x + r] = rng.integers(1, 25)
        m[rng.random((32, 32)) < 0.05] = rng.integers(0, 25)
        maps.append(m)
    snake = np.zeros((32, 32), dtype=np.int64)
    snake[::2, :] = 3
    snake[1::4, -1] = 3
    snake[3::4, 0] = 3
    maps.append(snake)
    batch = np.stack(maps)
    labels = map_component_labels(batch)
    for m, lab in zip(maps, labels, strict=True):
        want = by_search(m)
        got = [(d.colour, d.shape, d.cx, d.cy, d.area) for d in map_detections(m)]
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a[:2] == b[:2] and a[4] == b[4] and np.allclose(a[2:4], b[2:4])
        assert np.array_equal(lab, map_component_labels(m))  # batched == single
    assert len(map_detections(snake)) == 1  # one region, however long its path
    found = batch_map_detections(batch)
    assert found == [map_detections(m) for m in maps]  # measured together == one by one
    prompts = ["a red circle left of a blue square", "two green squares", "a blue circle"] * 5
    prompts = prompts[: len(maps)]
    assert map_verdicts(batch, prompts) == [map_verdict(m, p) for m, p in zip(maps, prompts, strict=True)]
    with pytest.raises(ValueError, match="13 maps for 2 prompts"):
        map_verdicts(batch, prompts[:2])


def test_the_judges_class_map_is_the_argmax_of_its_object_logits(tiny_shapes_pipeline):
    from latentalign.scorers.judge import judge_for_pipeline

    arch = {"width": 32, "layers": 1, "heads": 2, "objects": 25, "object_pixels": 4, "verdict_margin": 10}
    judge = judge_for_pipeline(tiny_shapes_pipeline, arch, seed=1).eval()
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, heads = judge(z, [PROMPT] * 3, torch.zeros(3), dense=True)
        _, only = judge(z, [PROMPT] * 3, torch.zeros(3), dense=("object_classes",))
        log_odds, passes = judge.score_terms(z, PROMPT)
    assert set(only) == {"object_classes"} and only["object_classes"].shape == (3, 32, 32)
    assert torch.equal(only["object_classes"], heads["objects"].argmax(1))
    assert torch.equal(passes, judge.verdicts(heads["objects"], [PROMPT] * 3))  # logits or classes: one verdict
    with pytest.raises(ValueError, match="choose from"):
        judge(z, [PROMPT] * 3, torch.zeros(3), dense=("pictures",))


def test_the_shipped_judge_reading_x0_has_its_own_name():
    from latentalign.scorers.factory import SHIPPED, scorer_folder, shared_scorer

    assert "shapes-judge-x0" in SHIPPED and scorer_folder("shapes-judge-x0") == scorer_folder("shapes-judge")
    base, view = load_scorer("shapes-judge"), load_scorer("shapes-judge-x0")
    assert base.space == "noisy_latents" and view.space == "latents"
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(view.score(z, PROMPT), base.score(z, PROMPT, 0))
    shared = shared_scorer("shapes-judge-x0")
    assert shared.space == "latents" and shared.blocks is shared_scorer("shapes-judge").blocks


def test_the_shapes_pipeline_early_exits_with_the_judge_on_x0():
    import latentalign
    from latentalign.methods import EarlyExit, SuccessiveHalving
    from latentalign.methods.base import PruneSchedule

    pipe = latentalign.load_pipeline("shapes")
    stage = EarlyExit(n=8).with_pipeline_defaults(pipe)  # its latentalign.json's choice (pipeline.SHAPES_EARLY_EXIT)
    assert (stage.scorer, stage.final_scorer, stage.at, stage.keep_share) == (
        "shapes-judge-x0",
        "shapes-judge-pixel",
        0.5,
        0.5,
    )
    assert stage.schedule(20) == PruneSchedule((10,), (4,))
    own = EarlyExit(n=8, at=0.3).with_pipeline_defaults(pipe)  # an option the caller gives wins over the file's
    assert (own.at, own.keep_share) == (0.3, 0.5)
    assert SuccessiveHalving(n=8).with_pipeline_defaults(pipe).scorer is None  # its own key: none
    # the file's schedule was chosen with its scorer: a caller's own scorer or schedule keeps the library's
    noisy = EarlyExit(n=8, scorer="shapes-noisy").with_pipeline_defaults(pipe)
    assert (noisy.scorer, noisy.at, noisy.keep_share) == ("shapes-noisy", 0.3, 0.5)
    assert noisy.final_scorer is None  # the caller's own scorer also makes the final pick
    assert EarlyExit(n=8, scorer="shapes-noisy", at=0.5).with_pipeline_defaults(pipe).keep_share == 0.5
    explicit = EarlyExit(n=8, prune_steps=(5,), keep=(2,)).with_pipeline_defaults(pipe)
    assert (explicit.scorer, explicit.at, explicit.keep_share) == ("shapes-judge-x0", 0.3, 0.5)
    assert explicit.final_scorer == "shapes-judge-pixel"  # an explicit schedule keeps the file's scorers
    result = latentalign.generate(pipe, PROMPT, seed=0, method="early-exit", n=2)
    assert result.cost.denoiser_evals == 2 * (2 * 10 + 1 * 10)  # both candidates for 10 steps, one after (guidance)
    settings = result.stages[0]["settings"]
    assert settings["at"] == 0.5 and settings["keep_share"] == 0.5, settings
