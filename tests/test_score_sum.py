"""ScoreSum: a weighted sum of scorers on clean latents equals the sum of its members' scores, differentiates,
refuses members it cannot read before any work, and serves as Best-of-N's final pick."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentalign import generate
from latentalign.methods import BestOfN, EarlyExit, NoiseOptimization, Reward
from latentalign.scorers import ScoreSum, build_shapes_judge, build_shapes_scorer, load_scorer, save_scorer
from latentalign.scorers.factory import SHIPPED_SUMS


@pytest.fixture(scope="module")
def parts(tiny_shapes_pipeline):
    vae = tiny_shapes_pipeline.vae
    judge = build_shapes_judge(tiny_shapes_pipeline, seed=1)
    pixel = build_shapes_scorer("pixel", vae.config.scaling_factor, vae=vae).eval()
    return judge, pixel


def test_the_sum_is_its_members_weighted_scores_and_differentiates(parts):
    judge, pixel = parts
    total = ScoreSum([(judge, 1.0), (pixel, 50.0)])
    z = torch.randn(3, 4, 8, 8, requires_grad=True)
    prompts = ["a red circle", "a blue square left of a green circle", "two yellow triangles"]
    got = total.score(z, prompts)
    want = judge.reading("latents").score(z, prompts) + 50.0 * pixel.score(pixel.decode(z), prompts)
    assert got.shape == (3,) and torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    decoded = ScoreSum([(judge, 1.0), (pixel, 50.0)]).score(z, prompts, pixels=pixel.decode(z))
    assert torch.allclose(decoded, got, rtol=1e-5, atol=1e-5)  # a caller's own decode reads the same
    nested = ScoreSum([(ScoreSum([(pixel, 50.0)]), 1.0), (judge, 1.0)])
    assert nested.reads_pixels and torch.allclose(nested.score(z, prompts), got, rtol=1e-5, atol=1e-5)
    got.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # batched equals one at a time
    with torch.no_grad():
        one = torch.cat([total.score(z[i : i + 1], prompts[i]) for i in range(3)])
    assert torch.allclose(one, got.detach(), rtol=1e-4, atol=1e-4)


def test_members_it_cannot_read_are_refused_before_any_work(tiny_shapes_pipeline, parts, tmp_path):
    judge, _ = parts
    no_vae = build_shapes_scorer("pixel", tiny_shapes_pipeline.vae.config.scaling_factor)
    with pytest.raises(ValueError, match="vae="):
        ScoreSum([(no_vae, 1.0)])
    with pytest.raises(ValueError, match="noisy latents only"):
        ScoreSum([(build_shapes_scorer("noisy", 0.5), 1.0)])
    with pytest.raises(ValueError, match="finite"):
        ScoreSum([(judge, float("nan"))])
    with pytest.raises(ValueError, match="at least one"):
        ScoreSum([])
    with pytest.raises(ValueError, match="finite"):
        ScoreSum([(judge, True)])
    with pytest.raises(ValueError, match="not saved"):
        save_scorer(ScoreSum([(judge, 1.0)]), tmp_path / "sum")
    assert not (tmp_path / "sum").exists()
    with pytest.raises(ValueError, match="4-channel"):
        ScoreSum([(judge, 1.0)]).score(torch.randn(1, 3, 8, 8), "a red circle")
    with pytest.raises(ValueError, match="pixels must be"):  # a decode of another batch, before any member runs
        ScoreSum([(judge, 1.0)]).score(torch.randn(2, 4, 8, 8), "a red circle", pixels=torch.rand(1, 3, 32, 32))


def test_best_of_n_with_the_sum_picks_the_candidate_it_scores_highest(tiny_shapes_pipeline, parts):
    judge, pixel = parts
    total = ScoreSum([(judge, 1.0), (pixel, 50.0)])
    own_decodes = pixel.cost.vae_decodes  # the member's own decodes (score_latents), not the run's
    r = generate(tiny_shapes_pipeline, "a red circle", method=BestOfN(n=4, scorer=total), seed=2)
    finals = [s["final"] for s in r.scores[0]]
    assert r.chosen[0] == int(np.argmax(finals))
    plain = generate(tiny_shapes_pipeline, "a red circle", seed=2)
    assert r.cost.vae_decodes == plain.cost.vae_decodes + 4  # the pipeline decodes every candidate for the sum...
    assert pixel.cost.vae_decodes == own_decodes  # ...once: the member reads that decode, it decodes nothing itself
    # as early exit's final pick: the judge prunes, the sum chooses among the kept
    ee = EarlyExit(n=4, scorer=judge, final_scorer=total, prune_steps=(1,), keep=(2,))
    a = generate(tiny_shapes_pipeline, "a red circle", method=ee, seed=2)
    b = generate(tiny_shapes_pipeline, "a red circle", method=ee, seed=2)
    assert a.chosen == b.chosen and torch.equal(a.latents, b.latents)


def test_the_shipped_sum_loads_by_name_from_its_shipped_members(tiny_shapes_pipeline):
    ((name, terms),) = SHIPPED_SUMS.items()
    total = load_scorer(name, vae=tiny_shapes_pipeline.vae)
    assert isinstance(total, ScoreSum) and total.weights == tuple(w for _, w in terms)
    with pytest.raises(ValueError, match="vae="):
        load_scorer(name)


def test_as_a_reward_it_decodes_once_an_iterate_through_the_pipeline(tiny_shapes_pipeline, parts):
    judge, pixel = parts
    total = ScoreSum([(judge, 1.0), (pixel, 50.0)])
    own_decodes = pixel.cost.vae_decodes
    runs = {
        name: generate(
            tiny_shapes_pipeline, "a red circle", seed=0, method=NoiseOptimization(iterations=2, rewards=[Reward(s)])
        )
        for name, s in (("pixel", pixel), ("sum", total))
    }
    assert runs["sum"].cost.vae_decodes == runs["pixel"].cost.vae_decodes > 1
    assert pixel.cost.vae_decodes == own_decodes  # the sum's pixel member read the run's decode, never its own
    assert torch.isfinite(runs["sum"].latents).all()
