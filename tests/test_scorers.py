"""Scorers: one interface over pixels, latents and noisy latents, tested on tiny random-weight CLIPs."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

from latentalign.scorers import (
    LatentCLIPScorer,
    NoisyCLIPScorer,
    PixelCLIPScorer,
    build_shapes_scorer,
    convert_open_clip_state_dict,
    fit_preview_map,
    load_scorer,
    save_scorer,
    sdxl_preview_map,
)
from latentalign.scorers.base import OPENAI_CLIP_MEAN
from latentalign.tokenizer import build_clip_tokenizer

WORDS = ["a", "red", "blue", "green", "circle", "square", "left", "of", "and"]
PROMPTS = ["a red circle", "a blue square", "a green circle left of a red square"]
SCALE = 0.5  # a VAE scaling factor other than 1, so forgetting to divide by it shows
PREVIEW = (
    torch.tensor([[0.2, -0.1, 0.05, 0.0], [0.1, 0.2, -0.1, 0.05], [-0.05, 0.0, 0.2, 0.1]]),
    torch.full((3,), 0.5),
)


def tiny_clip(tokenizer, *, channels: int = 3, image_size: int = 16, patch: int = 4, seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        num_channels=channels,
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=SCALE,
    ).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer(WORDS, model_max_length=16)


def make_scorer(kind: str, tokenizer, vae=None):
    if kind == "pixel":
        return PixelCLIPScorer(tiny_clip(tokenizer), tokenizer, vae=vae)
    if kind == "latent":
        return LatentCLIPScorer(tiny_clip(tokenizer, channels=4, image_size=8, patch=2), tokenizer, SCALE)
    return NoisyCLIPScorer(tiny_clip(tokenizer, image_size=8, patch=2), tokenizer, SCALE, *PREVIEW)


def make_input(kind: str, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "pixel":
        return torch.rand(n, 3, 20, 24, generator=g)  # not the vision size, and not square: resize + crop
    return torch.randn(n, 4, 8, 8, generator=g) * SCALE


T = torch.tensor([900, 500, 100])
KINDS = ["pixel", "latent", "noisy"]


@pytest.mark.parametrize("kind", KINDS)
def test_score_is_a_differentiable_cosine(kind, tokenizer):
    scorer = make_scorer(kind, tokenizer)
    assert scorer.space == {"pixel": "pixels", "latent": "latents", "noisy": "noisy_latents"}[kind]
    x = make_input(kind, 3).requires_grad_()
    scores = scorer.score(x, PROMPTS, t=T)
    assert scores.shape == (3,)
    assert (scores.abs() <= 1 + 1e-6).all()
    scores.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert scorer.cost.scorer_calls == 3


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_single_and_one_prompt_broadcasts(kind, tokenizer):
    scorer = make_scorer(kind, tokenizer)
    x = make_input(kind, 3)
    with torch.no_grad():
        batched = scorer.score(x, PROMPTS, t=T)
        single = torch.cat([scorer.score(x[i : i + 1], [PROMPTS[i]], t=T[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scorer.score(x, PROMPTS[0], t=T), scorer.score(x, [PROMPTS[0]] * 3, t=T))


@pytest.mark.parametrize("kind", KINDS)
def test_classify_gives_probabilities(kind, tokenizer):
    scorer = make_scorer(kind, tokenizer)
    with torch.no_grad():
        probs = scorer.classify(make_input(kind, 2), ["red circle", "blue square", "green"], t=500)
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_latent_scorer_divides_by_the_scaling_factor(tokenizer):
    clip = tiny_clip(tokenizer, channels=4, image_size=8, patch=2)
    z = make_input("latent", 2)
    with torch.no_grad():
        scaled = LatentCLIPScorer(clip, tokenizer, 0.13025).score(0.13025 * z, PROMPTS[:2])
        raw = LatentCLIPScorer(clip, tokenizer, 1.0).score(z, PROMPTS[:2])
    torch.testing.assert_close(scaled, raw)


def test_pixel_scorer_decodes_latents_and_counts_it(tokenizer):
    vae = tiny_vae()
    scorer = make_scorer("pixel", tokenizer, vae=vae)
    assert scorer.vae_scaling_factor == SCALE
    latents = make_input("latent", 2)
    with torch.no_grad():
        got = scorer.score_latents(latents, PROMPTS[:2])
        assert scorer.cost.vae_decodes == 2 and scorer.cost.scorer_calls == 2
        images = (vae.decode(latents / SCALE).sample / 2 + 0.5).clamp(0, 1)
        torch.testing.assert_close(got, scorer.score(images, PROMPTS[:2]))


def test_noisy_scorer_needs_t_and_starts_independent_of_it(tokenizer):
    scorer = make_scorer("noisy", tokenizer)
    z = make_input("noisy", 2)
    with pytest.raises(ValueError, match="timestep"):
        scorer.score(z, PROMPTS[:2])
    assert all((p == 0).all() for p in scorer.timestep_embedding.mlp[-1].parameters())
    with torch.no_grad():
        early, late = scorer.score(z, PROMPTS[:2], t=999), scorer.score(z, PROMPTS[:2], t=torch.tensor([10, 20]))
        torch.testing.assert_close(early, late)
        # A fresh noisy scorer is exactly its CLIP applied to the preview.
        plain = scorer.clip.get_image_features(
            pixel_values=(scorer.preview(z) - scorer.image_mean) / scorer.image_std
        ).pooler_output
        torch.testing.assert_close(scorer.embed_images(z, t=5), torch.nn.functional.normalize(plain, dim=-1))
        torch.nn.init.normal_(scorer.timestep_embedding.mlp[-1].weight)
        assert not torch.allclose(scorer.score(z, PROMPTS[:2], t=999), scorer.score(z, PROMPTS[:2], t=10))


def test_noisy_scorer_without_preview_reads_the_latent_channels(tokenizer):
    scorer = NoisyCLIPScorer(tiny_clip(tokenizer, channels=4, image_size=8, patch=2), tokenizer, SCALE)
    assert scorer.in_channels == 4 and scorer.preview_matrix is None
    z = 4 * torch.randn(2, 4, 8, 8)  # noisy latents far outside any preview's [0, 1] range
    with torch.no_grad():
        plain = scorer.clip.get_image_features(pixel_values=z / SCALE).pooler_output
        torch.testing.assert_close(scorer.embed_images(z, t=700), torch.nn.functional.normalize(plain, dim=-1))
    with pytest.raises(ValueError, match="8x8"):
        scorer.score(torch.randn(2, 4, 16, 16), PROMPTS[:2], t=700)
    with pytest.raises(ValueError, match="no preview"):
        scorer.preview(z)
    with pytest.raises(ValueError, match="neither"):
        NoisyCLIPScorer(tiny_clip(tokenizer), tokenizer, SCALE, preview_matrix=PREVIEW[0])


def test_bad_input_raises_before_any_work(tokenizer):
    pixel, latent, noisy = (make_scorer(k, tokenizer) for k in KINDS)
    images = make_input("pixel", 2)
    for bad_prompts in ([], ["a", "b", "c"], [1, 2]):
        with pytest.raises(ValueError):
            pixel.score(images, bad_prompts)
    with pytest.raises(ValueError, match="3-channel"):
        pixel.score(make_input("latent", 2), PROMPTS[:2])
    with pytest.raises(ValueError, match="4-channel"):
        latent.score(images, PROMPTS[:2])
    with pytest.raises(ValueError, match="8x8"):
        latent.score(torch.randn(2, 4, 16, 16), PROMPTS[:2])
    with pytest.raises(ValueError, match="timesteps"):
        noisy.score(make_input("noisy", 2), PROMPTS[:2], t=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="no VAE"):
        pixel.score_latents(make_input("latent", 2), PROMPTS[:2])
    with pytest.raises(ValueError):
        pixel.classify(images, [])
    assert pixel.cost.scorer_calls == latent.cost.scorer_calls == noisy.cost.scorer_calls == 0


def test_shapes_scorers_build_save_and_load(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        build_shapes_scorer("rgb", SCALE)
    variants = [(kind, kind, PREVIEW) for kind in KINDS] + [("noisy-latents", "noisy", None)]
    for name, kind, preview in variants:
        scorer = build_shapes_scorer(kind, SCALE, preview_map=preview)
        if kind == "noisy":  # a trained timestep embedding must survive the round trip
            torch.nn.init.normal_(scorer.timestep_embedding.mlp[-1].weight, std=0.1)
        x = torch.rand(2, 3, 32, 32) if kind == "pixel" else make_input(kind, 2)
        prompts = ["a red circle", "two blue squares"]
        save_scorer(scorer, tmp_path / name)
        assert (tmp_path / name / "model.safetensors").exists()
        assert json.loads((tmp_path / name / "latentalign_scorer.json").read_text())["kind"] == kind
        loaded = load_scorer(tmp_path / name)
        assert type(loaded) is type(scorer)
        assert (getattr(loaded, "preview_matrix", None) is None) == (preview is None or kind != "noisy")
        with torch.no_grad():
            torch.testing.assert_close(loaded.score(x, prompts, t=300), scorer.score(x, prompts, t=300), atol=0, rtol=0)
    with pytest.raises(FileNotFoundError):
        load_scorer(tmp_path)


def test_from_pretrained_reads_local_folders(tokenizer, tmp_path):
    tiny_clip(tokenizer).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    pixel = PixelCLIPScorer.from_pretrained(str(tmp_path / "clip"))
    assert pixel.image_mean.flatten().tolist() == pytest.approx(OPENAI_CLIP_MEAN)
    (tmp_path / "clip" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3})
    )
    pixel = PixelCLIPScorer.from_pretrained(str(tmp_path / "clip"))
    assert pixel.image_std.flatten().tolist() == [0.25] * 3
    noisy = NoisyCLIPScorer.from_pretrained(str(tmp_path / "clip"))
    assert all((p == 0).all() for p in noisy.timestep_embedding.mlp[-1].parameters())
    # The published map takes the pipeline's SDXL latents to 0-255 RGB: weights @ z + bias, then /255.
    z = torch.randn(1, 4, 8, 8)
    weights = torch.tensor([[60.0, -60, 25, -70], [60, -5, 15, -50], [60, 10, -5, -35]])
    expected = (torch.einsum("oc,nchw->nohw", weights, z) + torch.tensor([150.0, 140, 130])[:, None, None]) / 255
    torch.testing.assert_close(noisy.preview(z), expected.clamp(0, 1))


def test_fit_preview_map_recovers_a_linear_map():
    matrix, bias = torch.randn(3, 4), torch.randn(3)
    latents = torch.randn(6, 4, 8, 8)
    rgb = torch.einsum("oc,nchw->nohw", matrix, latents) + bias[:, None, None]
    images = torch.nn.functional.interpolate(rgb, scale_factor=4, mode="nearest")  # area-downsampling undoes it
    got_matrix, got_bias = fit_preview_map(latents, images)
    torch.testing.assert_close(got_matrix, matrix, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_bias, bias, atol=1e-4, rtol=1e-4)
    assert torch.allclose(sdxl_preview_map()[1] * 255, torch.tensor([150.0, 140, 130]))


# --- the open_clip (Latent-CLIP) converter, on a synthetic Latent-ViT-B-8-512 state dict with one layer per tower


def open_clip_state_dict(vocab: int, layers: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def rand(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    def block(prefix: str, w: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}ln_1.weight": 1 + rand(w, std=0.1),
            f"{prefix}ln_1.bias": rand(w),
            f"{prefix}attn.in_proj_weight": rand(3 * w, w, std=w**-0.5),
            f"{prefix}attn.in_proj_bias": rand(3 * w),
            f"{prefix}attn.out_proj.weight": rand(w, w, std=w**-0.5),
            f"{prefix}attn.out_proj.bias": rand(w),
            f"{prefix}ln_2.weight": 1 + rand(w, std=0.1),
            f"{prefix}ln_2.bias": rand(w),
            f"{prefix}mlp.c_fc.weight": rand(4 * w, w, std=w**-0.5),
            f"{prefix}mlp.c_fc.bias": rand(4 * w),
            f"{prefix}mlp.c_proj.weight": rand(w, 4 * w, std=(4 * w) ** -0.5),
            f"{prefix}mlp.c_proj.bias": rand(w),
        }

    sd = {
        "visual.conv1.weight": rand(768, 4, 8, 8, std=0.1),
        "visual.class_embedding": rand(768, std=0.1),
        "visual.positional_embedding": rand(65, 768, std=0.1),
        "visual.ln_pre.weight": 1 + rand(768, std=0.1),
        "visual.ln_pre.bias": rand(768),
        "visual.ln_post.weight": 1 + rand(768, std=0.1),
        "visual.ln_post.bias": rand(768),
        "visual.proj": rand(768, 512, std=768**-0.5),
        "token_embedding.weight": rand(vocab, 512, std=0.1),
        "positional_embedding": rand(77, 512, std=0.1),
        "ln_final.weight": 1 + rand(512, std=0.1),
        "ln_final.bias": rand(512),
        "text_projection": rand(512, 512, std=512**-0.5),
        "logit_scale": torch.tensor(4.6052),
        "attn_mask": torch.full((77, 77), float("-inf")).triu(1),  # a buffer some checkpoints carry; not a weight
    }
    for i in range(layers):
        sd |= block(f"visual.transformer.resblocks.{i}.", 768) | block(f"transformer.resblocks.{i}.", 512)
    return sd


def open_clip_tower(x: torch.Tensor, sd: dict, prefix: str, width: int, mask: torch.Tensor | None) -> torch.Tensor:
    """open_clip's residual attention block, written with torch's own MultiheadAttention as the reference."""
    ln = torch.nn.functional.layer_norm
    attn = torch.nn.MultiheadAttention(width, width // 64, batch_first=True)
    attn.load_state_dict({k.removeprefix(prefix + "attn."): v for k, v in sd.items() if k.startswith(prefix + "attn.")})
    h = ln(x, (width,), sd[prefix + "ln_1.weight"], sd[prefix + "ln_1.bias"])
    x = x + attn(h, h, h, attn_mask=mask, need_weights=False)[0]
    h = ln(x, (width,), sd[prefix + "ln_2.weight"], sd[prefix + "ln_2.bias"])
    h = torch.nn.functional.gelu(h @ sd[prefix + "mlp.c_fc.weight"].T + sd[prefix + "mlp.c_fc.bias"])
    return x + h @ sd[prefix + "mlp.c_proj.weight"].T + sd[prefix + "mlp.c_proj.bias"]


def test_open_clip_conversion_matches_a_hand_written_reference(tokenizer, tmp_path):
    sd = open_clip_state_dict(vocab=len(tokenizer))
    config, state = convert_open_clip_state_dict(sd)
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.patch_size, v.num_channels, v.image_size, v.num_attention_heads) == (768, 8, 4, 64, 12)
    assert (t.hidden_size, t.max_position_embeddings, t.num_attention_heads, config.projection_dim) == (512, 77, 8, 512)
    config.text_config.eos_token_id = tokenizer.eos_token_id  # from_open_clip takes the ids from the tokenizer
    clip = CLIPModel(config).eval()
    clip.load_state_dict(state, strict=True)

    ln = torch.nn.functional.layer_norm
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        patches = torch.nn.functional.conv2d(x, sd["visual.conv1.weight"], stride=8).flatten(2).transpose(1, 2)
        cls = sd["visual.class_embedding"].expand(2, 1, 768)
        embedded = torch.cat([cls, patches], dim=1) + sd["visual.positional_embedding"]
        torch.testing.assert_close(clip.vision_model.embeddings(x), embedded)

        h = ln(embedded, (768,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
        h = open_clip_tower(h, sd, "visual.transformer.resblocks.0.", 768, None)
        image = ln(h[:, 0], (768,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]
        torch.testing.assert_close(clip.get_image_features(pixel_values=x).pooler_output, image, atol=1e-4, rtol=1e-4)

        ids = tokenizer(["a red circle", "a blue square left of a green circle"], padding="max_length", max_length=77)
        ids = torch.tensor(ids.input_ids)
        h = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
        h = open_clip_tower(h, sd, "transformer.resblocks.0.", 512, sd["attn_mask"])
        h = ln(h, (512,), sd["ln_final.weight"], sd["ln_final.bias"])
        eot = (ids == tokenizer.eos_token_id).int().argmax(-1)  # open_clip's argmax: the EOT is OpenAI's top id
        text = h[torch.arange(2), eot] @ sd["text_projection"]
        torch.testing.assert_close(clip.get_text_features(input_ids=ids).pooler_output, text, atol=1e-4, rtol=1e-4)
    assert clip.logit_scale.item() == pytest.approx(4.6052)

    save_file(sd, tmp_path / "latent_clip.safetensors")
    scorer = LatentCLIPScorer.from_open_clip(tmp_path / "latent_clip.safetensors", tokenizer, 0.13025)
    with torch.no_grad():
        assert scorer.score(0.13025 * x, "a red circle").shape == (2,)


def test_open_clip_attention_split_lands_in_q_k_v(tokenizer):
    sd = open_clip_state_dict(vocab=len(tokenizer))
    for kind in ("weight", "bias"):
        key = f"visual.transformer.resblocks.0.attn.in_proj_{kind}"
        sd[key] = torch.cat([torch.full_like(sd[key][:768], c) for c in (1.0, 2.0, 3.0)])
    _, state = convert_open_clip_state_dict(sd)
    for name, c in (("q_proj", 1.0), ("k_proj", 2.0), ("v_proj", 3.0)):
        for kind, shape in (("weight", (768, 768)), ("bias", (768,))):
            tensor = state[f"vision_model.encoder.layers.0.self_attn.{name}.{kind}"]
            assert tensor.shape == shape and (tensor == c).all()
    torch.testing.assert_close(state["visual_projection.weight"], sd["visual.proj"].T)
    torch.testing.assert_close(state["text_projection.weight"], sd["text_projection"].T)


def test_open_clip_conversion_rejects_missing_and_unknown_keys(tokenizer):
    sd = open_clip_state_dict(vocab=len(tokenizer))
    with pytest.raises(ValueError, match="missing 'transformer.resblocks.0.mlp.c_proj.bias'"):
        convert_open_clip_state_dict({k: v for k, v in sd.items() if k != "transformer.resblocks.0.mlp.c_proj.bias"})
    with pytest.raises(ValueError, match="missing 'visual.proj'"):
        convert_open_clip_state_dict({k: v for k, v in sd.items() if k != "visual.proj"})
    with pytest.raises(ValueError, match="does not map"):
        convert_open_clip_state_dict(sd | {"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(768)})


def test_latent_clip_with_a_stem_reads_latents_and_round_trips(tokenizer, tmp_path):
    stem = {"in_channels": 4, "width": 12, "layers": 2}
    scorer = LatentCLIPScorer(tiny_clip(tokenizer, channels=12, image_size=8, patch=1), tokenizer, SCALE, stem=stem)
    assert scorer.in_channels == 4 and scorer.extra_modules()["latent_stem"] is scorer.stem
    x = make_input("latent", 2)
    with torch.no_grad():
        before = scorer.score(x, PROMPTS[:2])
        torch.nn.init.normal_(scorer.stem.net[0].weight)  # a trained stem must survive the round trip
        after = scorer.score(x, PROMPTS[:2])
    assert not torch.allclose(before, after)
    save_scorer(scorer, tmp_path / "stem")
    assert json.loads((tmp_path / "stem/latentalign_scorer.json").read_text())["stem"] == stem
    loaded = load_scorer(tmp_path / "stem")
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(x, PROMPTS[:2]), after, atol=0, rtol=0)
    (tmp_path / "stem/latent_stem.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="latent_stem"):
        load_scorer(tmp_path / "stem")
    with pytest.raises(ValueError, match="3-channel|4-channel"):
        scorer.score(torch.randn(1, 3, 8, 8), PROMPTS[0])


def test_a_stem_must_match_the_vision_tower(tokenizer):
    with pytest.raises(ValueError, match="num_channels 12"):
        LatentCLIPScorer(tiny_clip(tokenizer, channels=4, image_size=8, patch=1), tokenizer, SCALE, stem={"width": 12})
    with pytest.raises(ValueError, match=">= 1"):
        LatentCLIPScorer(tiny_clip(tokenizer, channels=4, image_size=8, patch=1), tokenizer, SCALE, stem={"width": 0})
