"""The attention-loss family on hand-made maps (known minimum, gradient sign), token grouping on tricky prompts,
and the IterRef / GSN-guidance modes on tiny pipelines (zero step size is plain generation, processors restored,
steps checked before any work)."""

from __future__ import annotations

import pytest
import torch

from latentalign import generate
from latentalign.attention_losses import (
    AttendAndExcite,
    IoULoss,
    SynGen,
    TokenGroups,
    TokenMaps,
    attention_loss,
    loss_names,
    soft_iou,
    symmetric_kl,
    token_groups,
    token_maps,
)
from latentalign.methods import GSNGuidance, IterRef


def blob(row: int, col: int, side: int = 8, value: float = 1.0) -> torch.Tensor:
    m = torch.full((side, side), 1e-3)
    m[row, col] = value
    return m


def maps_of(*subjects, modifiers=(), modifies=()) -> TokenMaps:
    mods = torch.stack(list(modifiers)) if modifiers else torch.zeros(0, 8, 8)
    return TokenMaps(torch.stack(list(subjects)), mods, tuple(modifies))


def test_the_registry_names_every_loss_and_refuses_unknown_ones():
    assert set(loss_names()) == {"attend-and-excite", "iou", "syngen"}
    assert isinstance(attention_loss("iou"), IoULoss)
    with pytest.raises(ValueError, match="unknown attention loss"):
        attention_loss("boxdiff")


def test_attend_and_excite_is_zero_at_full_peaks_and_its_gradient_raises_the_weakest():
    loss = AttendAndExcite()
    assert float(loss(maps_of(blob(0, 0), blob(5, 5)))["loss"]) == pytest.approx(0.0, abs=1e-6)
    weak = blob(5, 5, value=0.3).requires_grad_(True)
    out = loss(maps_of(blob(0, 0), weak))["loss"]
    assert float(out.detach()) == pytest.approx(0.7)
    (grad,) = torch.autograd.grad(out, weak)
    assert grad[5, 5] < 0 and grad.abs().sum() == -grad[5, 5]  # descent raises exactly the weak subject's peak


def test_iou_is_off_while_excitation_is_weak_and_separates_overlapping_subjects():
    assert float(soft_iou(blob(1, 1), blob(1, 1))) == pytest.approx(0.5)  # sum(min) / sum(a + b)
    assert float(soft_iou(blob(1, 1, value=1.0), blob(6, 6))) < 0.05
    loss = IoULoss(switch=0.2)
    weak = loss(maps_of(blob(1, 1, value=0.5), blob(1, 1, value=0.5)))
    assert float(weak["loss"]) == pytest.approx(float(weak["attend_and_excite"]))  # not switched on yet
    same = loss(maps_of(blob(1, 1), blob(1, 1)))
    assert float(same["loss"]) == pytest.approx(float(same["iou"]), rel=1e-4)  # both excited: overlap counts
    apart = loss(maps_of(blob(1, 1), blob(6, 6)))
    assert float(apart["loss"]) < float(same["loss"])  # the known minimum: excited and disjoint
    leak = (blob(6, 6) + blob(1, 1, value=0.5)).requires_grad_(True)  # the second subject leaks onto the first's
    (grad,) = torch.autograd.grad(loss(maps_of(blob(1, 1), leak))["iou"], leak)
    assert grad[1, 1] > 0  # descent lowers the leak


def test_syngen_pulls_a_modifier_to_its_noun_and_away_from_the_other_pair():
    loss = SynGen()
    bound = loss(maps_of(blob(1, 1), blob(6, 6), modifiers=(blob(1, 1), blob(6, 6)), modifies=(0, 1)))
    swapped = loss(maps_of(blob(1, 1), blob(6, 6), modifiers=(blob(6, 6), blob(1, 1)), modifies=(0, 1)))
    assert float(bound["attraction"]) < 1e-4 < float(swapped["attraction"])
    assert float(bound["loss"]) < float(swapped["loss"])
    assert float(symmetric_kl(blob(2, 2), blob(2, 2))) == pytest.approx(0.0, abs=1e-6)
    red = blob(6, 6).requires_grad_(True)  # "red" sits on the other noun's cell
    out = loss(maps_of(blob(1, 1), blob(6, 6), modifiers=(red, blob(6, 6)), modifies=(0, 1)))["loss"]
    (grad,) = torch.autograd.grad(out, red)
    assert grad[1, 1] < 0  # descent moves "red" towards its own noun's cell
    with pytest.raises(ValueError, match="attribute-noun pairs"):
        loss(maps_of(blob(1, 1)))


def test_token_maps_group_sub_tokens_and_drop_start_and_end():
    attention = torch.zeros(4, 6)
    attention[:, 1] = attention[:, 2] = 1.0  # a two-piece word at 1-2 takes all the attention
    groups = TokenGroups(((1, 2), (3,)), ("teddy", "ball"))
    maps = token_maps(attention, groups, first=1, last=5, grid=(2, 2), smooth=False)
    assert maps.subjects.shape == (2, 2, 2) and maps.modifiers.shape == (0, 2, 2)
    assert torch.allclose(maps.subjects[0], torch.full((2, 2), 0.5), atol=1e-4)  # mean of the two halves
    assert torch.allclose(maps.subjects[1], torch.zeros(2, 2), atol=1e-4)


def test_token_groups_on_tricky_prompts(tiny_sd_pipeline):
    tok = tiny_sd_pipeline.tokenizer  # CLIP BPE
    prompt = "a red ball, a blue ball and a teddybear"
    pieces = lambda w: tok(w, add_special_tokens=False).input_ids  # noqa: E731
    g = token_groups(tok, prompt, ["ball", "teddybear"], attributes=[("red", "ball"), ("blue", "ball")])
    assert g.words == ("ball", "ball", "teddybear")  # repeated words: one group each, in prompt order
    assert len(g.subjects[2]) == len(pieces("teddybear"))  # a split word is one group
    assert g.modifies == (0, 1)  # each colour binds to the next occurrence of its noun
    assert g.describe()["modifiers"][1] == {"word": "blue", "tokens": list(g.modifiers[1]), "modifies": "ball"}
    ids = tok(prompt).input_ids
    assert [ids[p] for p in g.subjects[0]] == pieces("ball")
    with pytest.raises(ValueError, match="its words: a, red"):
        token_groups(tok, prompt, ["dog"])
    with pytest.raises(ValueError, match="no 'ball' after it"):
        token_groups(tok, "a ball that is red", ["ball"], attributes=[("red", "ball")])
    with pytest.raises(ValueError, match="not among the subjects"):
        token_groups(tok, prompt, ["ball"], attributes=[("red", "teddybear")])


def test_zero_step_size_is_plain_generation_on_every_family(tiny_sd_pipeline, tiny_sdxl_pipeline, tiny_sd3_pipeline):
    kw = {"num_inference_steps": 3, "guidance_scale": 2.0, "seed": 1}
    for pipe in (tiny_sd_pipeline, tiny_sdxl_pipeline, tiny_sd3_pipeline):
        before = dict(pipe.unet.attn_processors if hasattr(pipe, "unet") else pipe.transformer.attn_processors)
        plain = generate(pipe, "a red ball on grass", **kw)
        for method in (
            IterRef(words=("ball",), steps=(1,), step_size=0.0, max_refine_iterations=2, threshold=1.0),
            GSNGuidance(words=("ball", "grass"), steps=(0, 2), step_size=0.0, loss="iou"),
            GSNGuidance(words=("ball",), attributes=(("red", "ball"),), steps=(1,), step_size=0.0, loss="syngen"),
        ):
            r = generate(pipe, "a red ball on grass", method=method, **kw)
            assert torch.allclose(r.latents, plain.latents, atol=1e-5), (type(pipe).__name__, method.name)
            assert r.cost.denoiser_evals > plain.cost.denoiser_evals  # the loss was computed
        model = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
        assert all(model.attn_processors[n] is p for n, p in before.items())


def test_iterref_refines_only_its_steps_and_records_the_tokens(tiny_shapes_pipeline):
    prompt = "a red circle and a blue square"
    r = generate(tiny_shapes_pipeline, prompt, seed=2, method=IterRef(steps=(1,), max_refine_iterations=2))
    plain = generate(tiny_shapes_pipeline, prompt, seed=2)
    assert set(r.losses[0]) == {1} and r.settings["refine_steps"] == [1] and r.settings["update_steps"] == []
    assert r.cost.denoiser_evals == plain.cost.denoiser_evals + 1 + r.refine_iterations[0]
    groups = r.settings["token_groups"][0]
    assert [s["word"] for s in groups["subjects"]] == ["circle", "square"]
    assert [(m["word"], m["modifies"]) for m in groups["modifiers"]] == [("red", "circle"), ("blue", "square")]
    g = generate(tiny_shapes_pipeline, prompt, seed=2, method=GSNGuidance(steps=(0, 2), loss="syngen"))
    assert set(g.losses[0]) == {0, 2} and g.refine_iterations[0] == 0
    assert not torch.allclose(g.latents, plain.latents)


def test_bad_steps_and_losses_fail_before_any_work(tiny_shapes_pipeline, tiny_sd_pipeline):
    for bad, match in (
        ({"steps": (-1,)}, "step indices"),
        ({"steps": (1.5,)}, "step indices"),
        ({"steps": (1,), "loss": "nope"}, "unknown attention loss"),
        ({"steps": (1,), "threshold": float("nan")}, "threshold"),
        ({"steps": (1,), "attributes": (("red",),)}, "pairs"),
    ):
        with pytest.raises(ValueError, match=match):
            IterRef(**bad)
    with pytest.raises(ValueError, match="past the run's 3 steps"):
        generate(tiny_shapes_pipeline, "a red circle", method=IterRef(steps=(3,)))
    with pytest.raises(ValueError, match="needs steps="):
        generate(tiny_shapes_pipeline, "a red circle", method="iterref")
    with pytest.raises(ValueError, match="needs attribute-noun pairs"):
        generate(tiny_sd_pipeline, "a ball", method=GSNGuidance(words=("ball",), loss="syngen"), num_inference_steps=2)
