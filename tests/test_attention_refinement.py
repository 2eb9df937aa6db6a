"""Attention refinement (Attend-and-Excite with refine steps) on tiny components: the capture context restores the
processors and changes nothing it computes, zero step size is plain generation, subject tokens are found or
refused, the loss reads peaks, cost counts every extra denoiser call, bad options fail before any work."""

from __future__ import annotations

import pytest
import torch

from latentalign import generate
from latentalign.adapters import Denoiser
from latentalign.attention_losses import AttendAndExcite, TokenGroups, token_groups, token_maps
from latentalign.methods import AttentionRefinement

CHEAP = AttentionRefinement(max_refine_iterations=2)


def test_capture_restores_the_processors_even_after_an_error(tiny_sd_pipeline):
    unet = tiny_sd_pipeline.unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError), Denoiser(tiny_sd_pipeline).capturing_attention(4):
        assert all(type(p).__name__ == "StoreCrossAttention" for n, p in unet.attn_processors.items() if ".attn2." in n)
        raise RuntimeError
    assert all(unet.attn_processors[n] is p for n, p in before.items())


def test_capture_changes_nothing_the_unet_computes_and_stores_token_distributions(tiny_sd_pipeline):
    den = Denoiser(tiny_sd_pipeline)
    cond = den.encode(["a red ball on grass"], 1.0)
    z, t = den.initial_noise([0]), den.new_scheduler(3).timesteps[0]
    with torch.no_grad():
        plain = den.model(z, t, cond.prompt_embeds).sample
        with den.capturing_attention(4) as store:
            captured = den.model(z, t, cond.prompt_embeds).sample
    assert torch.allclose(plain, captured, atol=1e-5)
    # the tiny UNet attends to text at 4x4 only: one down, one mid and two up attentions
    assert den.cross_attention_resolutions() == [4] and len(store) == 4
    maps = den.cross_attention(z, t, cond, 4)
    assert maps.shape == (1, 16, 77) and torch.allclose(maps.sum(-1), torch.ones(1, 16), atol=1e-5)
    with pytest.raises(ValueError, match="at 8x8"):
        den.cross_attention(z, t, cond, 8)


def test_loss_is_one_minus_the_weakest_subjects_peak():
    groups, last = TokenGroups(((1,), (3,)), ("a", "b")), 5  # 0 is the start token, 5 the end token
    maps = torch.full((16, 8), -20.0)
    maps[0, 1] = maps[5, 3] = 1.0  # both subjects own one cell outright (logits before x100 and softmax)
    loss = AttendAndExcite()
    strong = loss(token_maps(maps.softmax(-1), groups, 1, last, smooth=False))["loss"]
    assert strong < 0.01
    maps[5, 3] = -20.0  # the second subject has no region left
    weak = loss(token_maps(maps.softmax(-1), groups, 1, last, smooth=False))["loss"]
    assert weak > 0.5 and torch.isfinite(weak)


def test_subject_tokens(tiny_shapes_pipeline, tiny_sd_pipeline):
    tok = tiny_shapes_pipeline.tokenizer
    prompt = "a red circle left of two blue squares"
    ids = tok(prompt).input_ids
    groups = token_groups(tok, prompt, shapes_world=True)  # Shapes: the shape nouns, each with its colour
    assert [tok.decode([ids[g[0]]]).strip() for g in groups.subjects] == ["circle", "squares"]
    assert groups.modifiers == ((2,), (7,)) and groups.modifies == (0, 1)
    assert groups.modifier_words == ("red", "blue")
    assert token_groups(tok, prompt, ["red"]).subjects == ((2,),)
    with pytest.raises(ValueError, match="not a word"):
        token_groups(tok, "a red circle", ["square"])
    with pytest.raises(ValueError, match="words="):
        token_groups(tiny_sd_pipeline.tokenizer, "a red ball", None)


def test_zero_step_size_is_plain_generation(tiny_shapes_pipeline):
    zero = AttentionRefinement(step_size=0.0, max_refine_iterations=0)
    r = generate(tiny_shapes_pipeline, ["a red circle and a blue square"], seed=[2], method=zero)
    plain = generate(tiny_shapes_pipeline, "a red circle and a blue square", seed=2)
    assert torch.allclose(r.latents, plain.latents, atol=1e-5)


def test_refinement_moves_the_latents_and_counts_every_call(tiny_shapes_pipeline):
    r = generate(tiny_shapes_pipeline, "a red circle and a blue square", seed=2, method=CHEAP)
    plain = generate(tiny_shapes_pipeline, "a red circle and a blue square", seed=2)
    assert not torch.allclose(r.latents, plain.latents)
    steps = r.settings["num_inference_steps"]
    losses = r.losses[0]
    assert set(losses) == set(r.settings["update_steps"]) | set(r.settings["refine_steps"])
    assert all(0 <= v <= 1 for v in losses.values())
    loss_calls = len(losses) + r.refine_iterations[0]  # one prompt-branch UNet call per loss
    assert r.cost.denoiser_evals == plain.cost.denoiser_evals + loss_calls
    assert r.cost.denoiser_backwards == loss_calls and plain.cost.denoiser_backwards == 0  # each loss's gradient
    assert r.refine_iterations[0] <= CHEAP.max_refine_iterations * len(r.settings["refine_steps"])
    again = generate(tiny_shapes_pipeline, "a red circle and a blue square", seed=2, method=CHEAP)
    assert torch.equal(again.latents, r.latents) and steps == 3


def test_runs_on_sdxl_and_sd3(tiny_sdxl_pipeline, tiny_sd3_pipeline):
    kw = {"num_inference_steps": 3, "guidance_scale": 2.0}
    cheap = AttentionRefinement(words=("ball", "grass"), max_refine_iterations=2)
    for pipe in (tiny_sdxl_pipeline, tiny_sd3_pipeline):
        r = generate(pipe, "a red ball on grass", method=cheap, **kw)
        assert torch.isfinite(r.latents).all() and len(r.settings["subject_tokens"][0]) == 2
        plain = generate(pipe, "a red ball on grass", seed=0, num_inference_steps=3, guidance_scale=2.0)
        assert not torch.allclose(r.latents, plain.latents)
    zero = AttentionRefinement(words=("ball",), step_size=0.0, max_refine_iterations=0)
    r = generate(tiny_sd3_pipeline, "a red ball on grass", method=zero, **kw)
    assert torch.allclose(r.latents, plain.latents, atol=1e-5)  # flow matching: step size 0 is plain generation


def test_sd3_joint_attention_maps_are_the_text_block_of_the_joint_softmax(tiny_sd3_pipeline):
    den = Denoiser(tiny_sd3_pipeline)
    cond = den.encode(["a red ball on grass"], 1.0)
    z, t = den.initial_noise([0]), den.new_scheduler(3).timesteps[0]
    grid = den.cross_attention_resolutions()
    assert grid == [8]  # sample size 8, patch size 1
    with torch.no_grad():
        plain = den._call(z, t, cond.prompt_embeds, cond.added)
        with den.capturing_attention(8) as store:
            captured = den._call(z, t, cond.prompt_embeds, cond.added)
        assert torch.equal(plain, captured) and len(store) == len(den.model.transformer_blocks)
        # the first block's full joint softmax, written out: image rows, text columns, renormalised
        block = den.model.transformer_blocks[0]
        seen = {}
        hook = block.attn.register_forward_pre_hook(lambda m, a, kw: seen.update(kw) and None, with_kwargs=True)
        den._call(z, t, cond.prompt_embeds, cond.added)
        hook.remove()
        attn, x, c = block.attn, seen["hidden_states"], seen["encoder_hidden_states"]
        heads = lambda v: v.view(1, -1, attn.heads, v.shape[-1] // attn.heads).transpose(1, 2)  # noqa: E731
        q = torch.cat([heads(attn.to_q(x)), heads(attn.add_q_proj(c))], 2)
        k = torch.cat([heads(attn.to_k(x)), heads(attn.add_k_proj(c))], 2)
        joint = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)[:, :, :64, 64:]
        expected = (joint / joint.sum(-1, keepdim=True)).mean(1)
    assert torch.allclose(store[0], expected, atol=1e-5)
    maps = den.cross_attention(z, t, cond, 8)
    assert maps.shape == (1, 64, cond.prompt_embeds.shape[1])
    assert torch.allclose(maps.sum(-1), torch.ones(1, 64), atol=1e-5)


def test_generate_dispatches_and_bad_options_fail_first(tiny_shapes_pipeline):
    r = generate(tiny_shapes_pipeline, "two red circles", method="attention-refinement", max_refine_iterations=2)
    assert r.settings["subject_tokens"] == [[3]]
    for bad in (
        {"refine_at": ((1.5, 0.5),)},
        {"step_size": float("nan")},
        {"update_until": 2.0},
        {"resolution": 0},
        {"max_refine_iterations": -1},
    ):
        with pytest.raises(ValueError):
            AttentionRefinement(**bad)
    with pytest.raises(ValueError, match="no cross-attention layer"):
        generate(tiny_shapes_pipeline, "two red circles", method=AttentionRefinement(resolution=3))
