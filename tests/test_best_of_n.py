"""Best-of-N and early exit on tiny components: N=1 is plain generation, batching and memory limits change
nothing, pruning follows its schedule, cost adds up, bad options fail before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentalign import generate
from latentalign.adapters import Denoiser
from latentalign.bench import auroc
from latentalign.methods import (
    BestOfN,
    EarlyExit,
    PruneSchedule,
    early_exit_schedule,
    successive_halving_schedule,
)
from latentalign.methods.best_of_n import SEED_STRIDE
from latentalign.scorers import build_shapes_scorer, fit_preview_map


@pytest.fixture(scope="module")
def scorers(tiny_shapes_pipeline):
    vae = tiny_shapes_pipeline.vae
    scale = vae.config.scaling_factor
    preview = fit_preview_map(torch.randn(2, 4, 8, 8), torch.rand(2, 3, 32, 32))
    return {
        "pixel": build_shapes_scorer("pixel", scale, vae=vae),
        "latent": build_shapes_scorer("latent", scale),
        "noisy": build_shapes_scorer("noisy", scale, preview_map=preview),
    }


def best_of_n(pipe, prompt, *, scorer, n=4, seed=0, schedule=None, final_scorer=None, max_batch=64, **kw):
    """Best-of-N with an explicit prune schedule: EarlyExit's, or full Best-of-N for an empty one."""
    options = dict(scorer=scorer, n=n, final_scorer=final_scorer, max_batch=max_batch)
    if schedule is not None and (schedule.steps or schedule.keep):
        stage = EarlyExit(prune_steps=schedule.steps, keep=schedule.keep, **options)
    else:
        stage = BestOfN(**options)
    return generate(pipe, prompt, method=stage, seed=seed, **kw)


def _pixels(result) -> list[np.ndarray]:
    return [np.asarray(im) for im in result.images]


def test_n1_equals_plain_generation(tiny_shapes_pipeline, scorers):
    prompts, seeds = ["a red circle", "a blue square"], [3, 4]
    bon = best_of_n(tiny_shapes_pipeline, prompts, scorer=scorers["pixel"], n=1, seed=seeds)
    plain = generate(tiny_shapes_pipeline, prompts, seed=seeds)
    assert torch.equal(plain.latents, bon.latents)
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(plain), _pixels(bon), strict=True))
    assert bon.chosen == [0, 0] and bon.cost.scorer_calls == 0
    assert bon.cost.denoiser_evals == plain.cost.denoiser_evals and bon.cost.vae_decodes == plain.cost.vae_decodes


def test_chosen_candidate_is_the_best_scored_and_reproducible(tiny_shapes_pipeline, scorers):
    bon = best_of_n(tiny_shapes_pipeline, "a red circle", scorer=scorers["latent"], n=4, seed=1)
    finals = [s["final"] for s in bon.scores[0]]
    assert bon.chosen[0] == int(np.argmax(finals))
    winner = generate(tiny_shapes_pipeline, "a red circle", seed=1 + bon.chosen[0] * SEED_STRIDE)
    assert torch.allclose(winner.latents, bon.latents, rtol=1e-4, atol=1e-3)
    again = best_of_n(tiny_shapes_pipeline, "a red circle", scorer=scorers["latent"], n=4, seed=1)
    assert again.scores == bon.scores


def test_max_batch_changes_nothing(tiny_shapes_pipeline, scorers):
    schedule = PruneSchedule((1,), (2,))
    kwargs = dict(scorer=scorers["noisy"], n=4, seed=0, schedule=schedule)
    big = best_of_n(tiny_shapes_pipeline, "a red circle left of a blue square", max_batch=64, **kwargs)
    small = best_of_n(tiny_shapes_pipeline, "a red circle left of a blue square", max_batch=1, **kwargs)
    assert big.chosen == small.chosen and big.pruned_at == small.pruned_at
    assert torch.allclose(big.latents, small.latents, rtol=1e-4, atol=1e-3)


def test_early_exit_prunes_on_schedule_and_counts_cost(tiny_shapes_pipeline, scorers):
    steps, n = 3, 4  # the tiny pipeline's default schedule has 3 steps, guidance 2.0 (two evaluations a step)
    schedule = PruneSchedule((1, 2), (2, 1))
    r = best_of_n(tiny_shapes_pipeline, "two red circles", scorer=scorers["noisy"], n=n, seed=0, schedule=schedule)
    pruned = r.pruned_at[0]
    assert sorted(p for p in pruned if p is not None) == [1, 1, 2] and pruned.count(None) == 1
    assert pruned[r.chosen[0]] is None
    assert all("step 1" in s for s in r.scores[0]) and sum("step 2" in s for s in r.scores[0]) == 2
    assert r.cost.denoiser_evals == 2 * (n * 1 + 2 * 1 + 1 * (steps - 2))
    assert r.cost.scorer_calls == n + 2 and r.cost.vae_decodes == 1


def test_full_pixel_best_of_n_decodes_every_candidate(tiny_shapes_pipeline, scorers):
    r = best_of_n(tiny_shapes_pipeline, "a red circle", scorer=scorers["pixel"], n=3, seed=0)
    assert r.cost.vae_decodes == 3 + 1 and r.cost.scorer_calls == 3 and r.cost.denoiser_evals == 2 * 3 * 3


def test_generate_dispatches_methods(tiny_shapes_pipeline, scorers):
    r = generate(tiny_shapes_pipeline, "a red circle", seed=0, method="early-exit", n=4, scorer=scorers["noisy"])
    assert r.settings["prune_steps"] == [1] and r.settings["keep"] == [2]  # half of 4
    with pytest.raises(ValueError, match="unknown method"):
        generate(tiny_shapes_pipeline, "a red circle", method="best-of-all")
    with pytest.raises(TypeError, match="plain generation takes no option 'n'"):
        generate(tiny_shapes_pipeline, "a red circle", n=4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "n must be"),
        (dict(n=4, schedule=PruneSchedule((1,), (5,))), "keep counts"),
        (dict(n=4, schedule=PruneSchedule((3,), (1,))), "prune steps"),
        (dict(n=4, schedule=PruneSchedule((2, 1), (2, 1))), "prune steps"),
        (dict(n=4, schedule=PruneSchedule((1,), ())), "differ in length"),
        (dict(n=4, max_batch=0), "max_batch"),
    ],
)
def test_bad_options_fail_before_work(tiny_shapes_pipeline, scorers, kwargs, match):
    with pytest.raises(ValueError, match=match):
        best_of_n(tiny_shapes_pipeline, "a red circle", scorer=scorers["noisy"], **kwargs)


def test_schedules():
    assert early_exit_schedule(1, 20) == PruneSchedule()
    assert early_exit_schedule(8, 20) == PruneSchedule((6,), (4,))  # after 30% of the steps, keep half
    assert early_exit_schedule(8, 20, keep=0.25) == PruneSchedule((6,), (2,))
    halving = successive_halving_schedule(8, 20)
    assert halving.keep == (4, 2, 1) and len(halving.steps) == 3
    halving.validate(8, 20)


def test_auroc():
    assert auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5, 0.5], [1, 0]) == 0.5
    assert auroc([0.3, 0.1, 0.2, 0.4], [1, 0, 1, 0]) == 0.5
    with pytest.raises(ValueError):
        auroc([0.1, 0.2], [1, 1])


def test_trajectories_match_plain_generation(tiny_shapes_pipeline):
    from latentalign.trajectories import record_trajectories

    prompts, seeds = ["a red circle", "two blue squares", "a red circle"], [0, 1, 2]
    traj = record_trajectories(tiny_shapes_pipeline, prompts, seeds, batch=2, progress=False)
    plain = generate(tiny_shapes_pipeline, prompts, seed=seeds)
    assert traj.latents.shape == (3, 3, 4, 8, 8) and traj.x0.shape == (3, 3, 4, 8, 8)
    assert torch.allclose(traj.final, plain.latents, rtol=1e-4, atol=1e-3)
    # step 0 sees the seed's noise; later steps differ from it
    assert torch.equal(traj.latents[0, 0], tiny_shapes_pipeline.scheduler.init_noise_sigma * first_noise(seeds[0]))
    assert not torch.equal(traj.latents[0, 1], traj.latents[0, 0])


def first_noise(seed: int) -> torch.Tensor:
    return torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))[0]


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_best_of_n_and_early_exit_on_sdxl_and_sd3(request, family):
    """The added conditioning (SDXL's pooled embeddings and time ids, SD3's pooled projections) follows the
    candidates through pruning, and NoisyCLIP reads z_t in its DDPM form: SDXL's Euler latents carry sigma (the
    scaled model input is sqrt(a) x0 + sqrt(1 - a) eps); SD3's flow-matching z_t is read as it is."""
    pipe, kw = request.getfixturevalue(f"tiny_{family}_pipeline"), {"num_inference_steps": 3, "guidance_scale": 2.0}
    scale = pipe.vae.config.scaling_factor
    latent = build_shapes_scorer("latent", scale)
    noisy = build_shapes_scorer(
        "noisy", scale, preview_map=fit_preview_map(torch.randn(2, 4, 8, 8), torch.rand(2, 3, 32, 32))
    )
    plain = generate(pipe, "a red ball", seed=2, **kw)
    assert torch.equal(best_of_n(pipe, "a red ball", scorer=latent, n=1, seed=2, **kw).latents, plain.latents)

    r = best_of_n(
        pipe, "a red ball", scorer=noisy, final_scorer=latent, n=3, seed=0, schedule=PruneSchedule((1,), (2,)), **kw
    )
    sigma = Denoiser(pipe).new_scheduler(3).sigmas[1]
    read_as = 1 / (sigma**2 + 1) ** 0.5 if family == "sdxl" else 1.0
    for j, seed in enumerate(r.candidate_seeds[0]):
        seen = {}
        winner = generate(
            pipe, "a red ball", seed=seed, callback=lambda c, seen=seen: seen.setdefault(c["step"], c), **kw
        )
        z1, t1 = seen[1]["latents"], seen[1]["t"]
        with torch.no_grad():
            expected = noisy.score(z1 * read_as, "a red ball", torch.as_tensor(t1).long())
        assert r.scores[0][j]["step 1"] == pytest.approx(float(expected), abs=1e-5)
        if j == r.chosen[0]:
            assert torch.allclose(winner.latents, r.latents, atol=1e-4)


def test_keep_candidates_returns_every_candidates_last_latents(tiny_shapes_pipeline, scorers):
    stage = EarlyExit(n=4, scorer=scorers["noisy"], final_scorer=scorers["latent"], prune_steps=(1,), keep=(2,))
    kept = generate(tiny_shapes_pipeline, ["a red circle", "two blue squares"], seed=[0, 1], method=stage)
    assert "candidate_latents" not in kept.outputs  # off by default
    from dataclasses import replace

    r = generate(
        tiny_shapes_pipeline,
        ["a red circle", "two blue squares"],
        seed=[0, 1],
        method=replace(stage, keep_candidates=True),
    )
    assert torch.equal(r.latents, kept.latents) and r.chosen == kept.chosen  # keeping them changes nothing
    for b in range(2):
        stack = r.candidate_latents[b]
        assert stack.shape == (4, 4, 8, 8) and torch.isfinite(stack).all()
        assert torch.equal(stack[r.chosen[b]], r.latents[b])
        assert sum(p is None for p in r.pruned_at[b]) == 2
