"""shapes-flow, the Shapes world in SD3's architecture: the trainer's text path equals the stock pipeline's, a few
steps on a tiny config move the loss and resume to the same weights, and the saved folder loads with stock
diffusers and generates what latentalign generates. The shipped folder is checked the same way when present."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file

import latentalign.training.flow as flow_training
from latentalign import generate, load_pipeline
from latentalign.pipeline import SHAPES_FLOW_WEIGHTS, assemble_flow, build_shapes_flow_components
from latentalign.training.flow import (
    FlowTrainConfig,
    compressed_t5,
    flow_matching_loss,
    flow_sigmas,
    shapes_vae,
    text_states,
    train_flow,
)

TINY = FlowTrainConfig(steps=4, batch=8, pool_size=32, checkpoint_every=2, warmup=1)
WEIGHTS = ["transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"]
PROMPTS = ["a red circle", "a blue square left of a green triangle"]


def quiet(*args, **kwargs):
    pass


def test_the_trainers_text_path_equals_the_stock_pipelines():
    """One zero token with log(256) on its logit (training) == the 256 zero T5 rows the stock pipeline feeds."""
    comps = build_shapes_flow_components(0)
    pipe = assemble_flow(comps)
    ids = comps["tokenizer"](PROMPTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    z, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0, 900.0])
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, PROMPTS, PROMPTS, do_classifier_free_guidance=False)
        assert embeds.shape[1] == 16 + 256  # CLIP's 16 tokens, then T5's zeros at the stock max_sequence_length
        stock = comps["transformer"](z, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=t).sample
        seq, ours_pooled = text_states([comps["text_encoder"], comps["text_encoder_2"]], ids.input_ids, 128)
        original = compressed_t5(comps["transformer"])
        try:
            ours = comps["transformer"](z, encoder_hidden_states=seq, pooled_projections=ours_pooled, timestep=t)
        finally:
            comps["transformer"].set_attn_processor(original)
    assert torch.equal(ours_pooled, pooled) and seq.shape[1] == 17
    torch.testing.assert_close(ours.sample, stock, rtol=1e-5, atol=1e-5)


def test_the_adapters_compact_text_gives_the_same_guided_prediction_and_restores_the_processors():
    """Denoiser.compact_repeated_text: the zero T5 block as one weighted row, the same guided velocity as the full
    conditioning up to rounding, and the transformer's own processors back afterwards."""
    from latentalign.adapters import Denoiser

    pipe = assemble_flow(build_shapes_flow_components(0))
    den = Denoiser(pipe)
    cond = den.encode(PROMPTS, 3.0)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    before = {n: type(p) for n, p in den.core.attn_processors.items()}
    with torch.no_grad():
        full, _ = den.denoise(z, 800, cond)
        with den.compact_repeated_text(cond) as compact:
            assert compact.prompt_embeds.shape[1] == compact.negative_embeds.shape[1] == 17
            fast, _ = den.denoise(z, 800, compact)
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-4)
    assert {n: type(p) for n, p in den.core.attn_processors.items()} == before
    distinct = replace(cond, prompt_embeds=torch.randn_like(cond.prompt_embeds))  # a real T5: nothing repeats
    with den.compact_repeated_text(distinct) as same:
        assert same is distinct


def test_trajectories_recorded_through_the_compact_text_are_the_plain_ones_up_to_rounding():
    from latentalign.trajectories import record_trajectories

    pipe = assemble_flow(build_shapes_flow_components(0))
    args = (pipe, PROMPTS, [3, 4])
    plain = record_trajectories(*args, num_inference_steps=3, progress=False)
    compact = record_trajectories(*args, num_inference_steps=3, progress=False, compact_text=True)
    torch.testing.assert_close(compact.latents, plain.latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compact.final, plain.final, rtol=1e-4, atol=1e-4)
    assert {n: type(p) for n, p in pipe.transformer.attn_processors.items()} == {
        n: type(p) for n, p in assemble_flow(build_shapes_flow_components(0)).transformer.attn_processors.items()
    }  # the transformer's own processors are back


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    train_flow(out, TINY, log=quiet)
    return out


def test_training_moves_the_loss_on_a_fixed_batch():
    comps = build_shapes_flow_components(0, shapes_vae())
    transformer, encoders = comps["transformer"], [comps["text_encoder"], comps["text_encoder_2"]]
    compressed_t5(transformer)
    g = torch.Generator().manual_seed(0)
    ids = comps["tokenizer"](PROMPTS * 4, padding="max_length", max_length=16, return_tensors="pt").input_ids
    z0, noise, sigma = (
        torch.randn(8, 4, 8, 8, generator=g),
        torch.randn(8, 4, 8, 8, generator=g),
        torch.rand(8, generator=g),
    )
    params = [p for m in [transformer, *encoders] for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(16):
        loss = flow_matching_loss(transformer, encoders, z0, ids, noise, sigma)["flow"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0]


def test_the_trained_folder_loads_with_stock_diffusers_and_generates_the_same(trained):
    folder = trained / "pipeline"
    report = json.loads((folder / "training.json").read_text())
    assert report["step"] == TINY.steps and all(torch.isfinite(torch.tensor(v)) for v in report["losses"].values())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert vae["shift_factor"] == report["vae_shift_factor"] and vae["scaling_factor"] == report["vae_scaling_factor"]
    stock_pipe = StableDiffusion3Pipeline.from_pretrained(folder, use_safetensors=True)
    check_stock_parity(stock_pipe, load_pipeline(str(folder)))
    # its T5 is zeros: loaded without it (the stock pipeline then feeds zeros), the images are the same
    without_t5 = load_pipeline(str(folder), text_encoder_3=None, tokenizer_3=None)
    kw = {"num_inference_steps": 3, "guidance_scale": 2.0, "seed": 1}
    with_t5 = generate(stock_pipe, PROMPTS, **kw)
    assert torch.equal(generate(without_t5, PROMPTS, **kw).latents, with_t5.latents)


def check_stock_parity(stock_pipe, pipe):
    kw = {"num_inference_steps": 3, "guidance_scale": 2.0}
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    stock = stock_pipe(PROMPTS[1], latents=latents, output_type="latent", **kw).images
    ours = generate(pipe, PROMPTS[1], seed=4, **kw)
    assert torch.equal(ours.latents, stock)


@pytest.mark.parametrize("interrupt_after", [1])
def test_resume_gives_the_same_weights(trained, tmp_path, monkeypatch, interrupt_after):
    saves = []
    real_save = flow_training.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == interrupt_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(flow_training, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_flow(tmp_path, TINY, log=quiet)
    assert not (tmp_path / "pipeline").exists()
    monkeypatch.setattr(flow_training, "save_checkpoint", real_save)
    logs = []
    train_flow(tmp_path, TINY, log=logs.append)
    assert any(line.startswith("resuming") for line in logs)
    for name in WEIGHTS:
        ours, ref = load_file(str(tmp_path / "pipeline" / name)), load_file(str(trained / "pipeline" / name))
        assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ours)


def test_resume_with_another_config_is_refused(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "checkpoint", tmp_path / "checkpoint")
    with pytest.raises(ValueError, match="another config"):
        train_flow(tmp_path, replace(TINY, lr=1e-2), log=quiet)


@pytest.mark.parametrize(
    "bad",
    [
        dict(steps=0),
        dict(cond_dropout=1.0),
        dict(logit_std=0.0),
        dict(high_noise_share=1.5),
        dict(high_noise_start=1.0),
        dict(category_weights=(0.5, 0.5, 0.0)),
        dict(category_weights=(0.1, 0.4, 0.3, -0.2)),
        dict(category_weights=(0.0, 0.0, 0.0, 0.0)),
        dict(category_weights=(float("nan"), 1.0, 1.0, 1.0)),
        dict(pair_order="sorted"),
    ],
)
def test_bad_flow_config_is_refused_at_once(bad):
    with pytest.raises(ValueError):
        FlowTrainConfig(**bad)


def test_train_flow_refuses_bad_category_weights_before_any_work(tmp_path):
    from latentalign.cli import main

    out = tmp_path / "flow"
    assert main(["train", "flow", "--category-weights", "0.1", "0.4", "0.3", "-0.2", "--out", str(out)]) == 2
    assert not out.exists()


def test_noise_levels_put_the_high_noise_share_in_the_upper_range():
    g = torch.Generator().manual_seed(0)
    plain = flow_sigmas(FlowTrainConfig(high_noise_share=0.0), 20000, g)
    mixed = flow_sigmas(FlowTrainConfig(high_noise_share=0.5), 20000, g)
    assert 0 < float(plain.min()) and float(plain.max()) < 1
    assert abs(float((plain > 0.8).float().mean()) - 0.083) < 0.01  # logit-normal(0, 1) alone
    # half logit-normal, half uniform on [0.5, 1): P(s > 0.8) = 0.5 * 0.083 + 0.5 * 0.4
    assert abs(float((mixed > 0.8).float().mean()) - (0.5 * 0.083 + 0.5 * 0.4)) < 0.015


@pytest.mark.skipif(not (SHAPES_FLOW_WEIGHTS / "model_index.json").exists(), reason="shapes-flow is not shipped")
def test_the_shipped_shapes_flow_loads_with_stock_diffusers_and_generates_the_same():
    stock_pipe = StableDiffusion3Pipeline.from_pretrained(SHAPES_FLOW_WEIGHTS, use_safetensors=True)
    check_stock_parity(stock_pipe, load_pipeline("shapes-flow"))
    sizes = sum(f.stat().st_size for f in Path(SHAPES_FLOW_WEIGHTS.parent).rglob("*.safetensors"))
    assert sizes < 80 * 2**20  # every shipped weight together


@pytest.mark.skipif(not (SHAPES_FLOW_WEIGHTS / "model_index.json").exists(), reason="shapes-flow is not shipped")
def test_the_shipped_shapes_flow_settings_are_what_shipping_writes(tmp_path):
    from latentalign.generation import sampling_defaults
    from latentalign.methods import BestOfN, EarlyExit, NoiseProjection
    from latentalign.methods.noise_projection import load_projector

    flow_training.write_flow_defaults(tmp_path, shipped=True)
    shipped = json.loads((SHAPES_FLOW_WEIGHTS / "latentalign.json").read_text())
    assert json.loads((tmp_path / "latentalign.json").read_text()) == shipped
    flow_training.write_flow_defaults(tmp_path)  # a newly trained model: no judge or projector trained through it
    fresh = json.loads((tmp_path / "latentalign.json").read_text())
    assert fresh["best-of-n"] == {"scorer": "shapes-pixel"} and not {"early-exit", "noise-projection"} & set(fresh)
    pipe = load_pipeline("shapes-flow")
    assert sampling_defaults(pipe).for_method("best-of-n") == {"scorer": "shapes-flow-judge"}  # chosen on train prompts
    assert BestOfN(n=4).with_pipeline_defaults(pipe).scorer == "shapes-flow-judge"
    assert EarlyExit(n=4).with_pipeline_defaults(pipe).scorer == "shapes-flow-judge"
    assert BestOfN(n=4, scorer="shapes-judge").with_pipeline_defaults(pipe).scorer == "shapes-judge"
    projector = NoiseProjection().with_pipeline_defaults(pipe).projector  # the one trained through shapes-flow
    assert projector == "shapes-projector-flow"
    assert (load_projector(projector).config.latent_channels, load_projector(projector).config.text_dim) == (4, 128)
