"""Bad input, table-driven: each gets its exact error type and message before any work (no text-encoder,
denoiser or VAE call), for the API and the command line; and no NaN or infinity ever reaches a result."""

from __future__ import annotations

import math

import pytest
import torch

from latentalign import generate
from latentalign.cli import main
from latentalign.engine import NonFiniteError
from latentalign.methods import AttentionRefinement, BestOfN, EarlyExit, NoiseOptimization, Reward
from latentalign.scorers import build_shapes_scorer


class WorkStarted(Exception):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """Patch a pipeline so any text-encoder, denoiser or VAE call raises WorkStarted (not a ValueError)."""

    def forbid(pipe):
        def boom(*args, **kwargs):
            raise WorkStarted

        for name in ("text_encoder", "unet", "vae"):
            monkeypatch.setattr(getattr(pipe, name), "forward", boom)
        monkeypatch.setattr(pipe.vae, "decode", boom)
        return pipe

    return forbid


PROMPT = "a red circle left of a blue square"

API = [
    # (generate keyword arguments, error type, message fragment)
    ({"guidance_scale": math.nan}, ValueError, "guidance_scale must be a finite number"),
    ({"guidance_scale": math.inf}, ValueError, "guidance_scale must be a finite number"),
    ({"guidance_scale": -1.0}, ValueError, "guidance_scale"),
    ({"guidance_scale": True}, ValueError, "guidance_scale"),
    ({"num_inference_steps": True}, ValueError, "num_inference_steps must be a positive integer"),
    ({"num_inference_steps": 2.5}, ValueError, "num_inference_steps must be a positive integer"),
    ({"seed": 2**32}, ValueError, r"below 2\*\*32"),
    ({"seed": 2**63}, ValueError, r"below 2\*\*32"),
    ({"seed": -1}, ValueError, "non-negative integers"),
    ({"seed": 1.5}, ValueError, "non-negative integers"),
    ({"seed": "abc"}, ValueError, "non-negative integers"),
    ({"seed": True}, ValueError, "non-negative integers"),
    ({"method": "best-of-n", "n": True}, ValueError, "n must be an integer"),
    ({"method": "best-of-n", "n": 0}, ValueError, "n must be an integer"),
    ({"method": "early-exit", "n": 4, "seed": 2**32 - 10}, ValueError, "from 2\\*\\*32 on seeds repeat"),
    ({"method": "noise-optimization", "iterations": 2.5}, ValueError, "iterations must be an integer"),
    ({"method": "noise-optimization", "lr": math.nan}, ValueError, "lr must be a finite number"),
    ({"method": "attention-refinement", "max_refine_iterations": 2.5}, ValueError, "max_refine_iterations"),
    ({"method": "attention-refinement", "step_size": math.inf}, ValueError, "step_size must be finite"),
    ({"method": "attention-refinement", "words": ("dragon",)}, ValueError, "not a word of the prompt"),
    ({"method": "best-of-all"}, ValueError, "unknown method"),
    ({"method": "best-of-n+early-exit"}, ValueError, "selection place"),
    ({"n": 4}, TypeError, "plain generation takes no option 'n'"),
    ({"eta": math.nan}, ValueError, "eta must be a finite number"),
    ({"output_type": "jpeg"}, ValueError, "output_type"),
]


@pytest.mark.parametrize("kwargs, error, match", API, ids=[str(i) for i in range(len(API))])
def test_api_refuses_before_any_work(tiny_shapes_pipeline, no_work, kwargs, error, match):
    pipe = no_work(tiny_shapes_pipeline)
    with pytest.raises(error, match=match):
        generate(pipe, PROMPT, **kwargs)


@pytest.mark.parametrize(
    "prompt, match",
    [("a purple dragon", "unknown word"), ("", "empty prompt"), (["a red circle", "  "], "empty prompt"), ([], "no")],
)
def test_prompts_are_refused_before_any_work(tiny_shapes_pipeline, no_work, prompt, match):
    with pytest.raises(ValueError, match=match):
        generate(no_work(tiny_shapes_pipeline), prompt)


def test_a_shapes_prompt_is_one_text_however_it_is_written(tiny_shapes_pipeline):
    canonical = generate(tiny_shapes_pipeline, "a red circle and a blue square", seed=3)
    written = generate(tiny_shapes_pipeline, "A red circle, and a blue  square", seed=3)
    assert torch.equal(canonical.latents, written.latents) and written.prompts == ["a red circle and a blue square"]


def test_seeds_wider_than_the_generator_are_refused_not_wrapped(tiny_shapes_pipeline):
    # torch's CPU generator keeps 32 bits of a seed: s and s + 2**32 would draw the same noise
    a = torch.randn(4, generator=torch.Generator().manual_seed(5))
    b = torch.randn(4, generator=torch.Generator().manual_seed(5 + 2**32))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="below 2\\*\\*32"):
        generate(tiny_shapes_pipeline, PROMPT, seed=5 + 2**32)


@pytest.fixture(scope="module")
def latent_scorer(tiny_shapes_pipeline):
    return build_shapes_scorer("latent", tiny_shapes_pipeline.vae.config.scaling_factor)


@pytest.mark.parametrize(
    "x, t, match",
    [
        (torch.full((1, 4, 8, 8), math.nan), None, "NaN or infinite"),
        (torch.full((1, 4, 8, 8), math.inf), None, "NaN or infinite"),
        (torch.zeros(1, 3, 8, 8), None, "4-channel"),
        (torch.zeros(1, 4, 8, 8), torch.tensor([-5]), "timesteps must be finite"),
        (torch.zeros(1, 4, 8, 8), torch.tensor([1e6]), "timesteps must be finite"),
        (torch.zeros(1, 4, 8, 8), torch.tensor([math.nan]), "timesteps must be finite"),
    ],
)
def test_scorers_refuse_inputs_they_would_score_as_nan(latent_scorer, x, t, match):
    with pytest.raises(ValueError, match=match):
        latent_scorer.score(x, "a red circle", t)


def test_pixel_scorers_refuse_pixels_outside_zero_one(tiny_shapes_pipeline):
    vae = tiny_shapes_pipeline.vae
    pixel = build_shapes_scorer("pixel", vae.config.scaling_factor, vae=vae)
    with pytest.raises(ValueError, match="pixels in \\[0, 1\\]"):
        pixel.score(torch.full((1, 3, 32, 32), 255.0), "a red circle")


@pytest.mark.parametrize(
    "method",
    [
        None,
        AttentionRefinement(step_size=1e30, max_refine_iterations=1),
        NoiseOptimization(iterations=1),
        BestOfN(n=2),
        EarlyExit(n=2),
    ],
    ids=["plain", "attention-refinement", "noise-optimization", "best-of-n", "early-exit"],
)
def test_no_nan_or_infinity_reaches_a_result(tiny_shapes_pipeline, latent_scorer, method):
    """A guidance scale that overflows float32 makes every latent NaN, and so does a refinement step of 1e30 (its
    update stays finite, the next denoiser call does not): the run is refused with a NonFiniteError (a ValueError)
    naming the images, never returned."""
    if isinstance(method, NoiseOptimization):
        method = NoiseOptimization(iterations=1, rewards=[Reward(latent_scorer)])
    elif isinstance(method, (BestOfN, EarlyExit)):
        method = type(method)(n=2, scorer=latent_scorer)
    kwargs = {} if method is None else {"method": method}
    with pytest.raises(NonFiniteError, match="non-finite latents"):
        generate(tiny_shapes_pipeline, PROMPT, guidance_scale=1e30, **kwargs)
    if isinstance(method, AttentionRefinement):
        with pytest.raises(NonFiniteError, match="image\\(s\\) \\[0\\]"):
            generate(tiny_shapes_pipeline, PROMPT, method=method)


def test_a_candidate_gone_non_finite_is_never_chosen(tiny_shapes_pipeline, latent_scorer, monkeypatch):
    """One NaN candidate among finite ones: scored None, never kept; the result is finite."""
    import latentalign.engine as engine

    real = engine.draw_rows

    def one_nan(run):
        noise, gens, seeds = real(run)
        noise[1] = math.nan  # candidate 1 of the image
        return noise, gens, seeds

    monkeypatch.setattr(engine, "draw_rows", one_nan)
    r = generate(tiny_shapes_pipeline, PROMPT, method=BestOfN(n=3, scorer=latent_scorer), seed=0)
    assert r.scores[0][1]["final"] is None and r.chosen[0] != 1 and torch.isfinite(r.latents).all()


def test_noise_optimisation_reports_a_non_finite_reward_as_none(tiny_shapes_pipeline, latent_scorer):
    class NaNScorer(type(latent_scorer)):
        def score(self, x, prompts, t=None):
            return super().score(x, prompts, t) * math.nan

    nan = NaNScorer(latent_scorer.clip, latent_scorer.tokenizer, latent_scorer.vae_scaling_factor)
    r = generate(tiny_shapes_pipeline, PROMPT, method=NoiseOptimization(iterations=2, rewards=[Reward(nan)]))
    assert r.rewards[0] == [None, None, None] and r.skipped_updates == [2] and torch.isfinite(r.latents).all()


CLI = [
    (["generate", PROMPT, "--method", "early-exit", "--n", "0"], "--n must be >= 1"),
    (["generate", PROMPT, "--threads", "0"], "--threads"),
    (["generate", PROMPT, "--out", "/dev/null/x"], "/dev/null is not a folder"),
    (["generate", PROMPT, "--method", "noise-projection", "--n", "2"], "--n needs --method"),
    (["check", "/", PROMPT], "is not a file"),
    (["bench", "--seeds", "1", "--out", "/dev/null"], "--out /dev/null: not a folder"),
]


@pytest.mark.parametrize("argv, message", CLI, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(CLI)])
def test_cli_errors_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    import latentalign.pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the model before validating the input")

    monkeypatch.setattr(latentalign.pipeline, "load_pipeline", no_loading)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err and err.count("\n") == 1


def test_check_exit_codes(tmp_path, capsys):
    """0: the image follows the prompt; 1: it does not; 2: bad input (not the same code as a failed verdict)."""
    from latentalign.world import render

    image = tmp_path / "img.png"
    render("a red circle").save(image)
    assert main(["check", str(image), "a red circle"]) == 0
    assert main(["check", str(image), "a blue square"]) == 1
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["check", str(tmp_path / "broken.png"), "a red circle"]) == 2
    assert "not a readable image" in capsys.readouterr().err


def test_weights_load_from_safetensors_only(tmp_path):
    from latentalign import load_pipeline
    from latentalign.pipeline import assemble, build_shapes_components

    assemble(build_shapes_components(0)).save_pretrained(tmp_path, safe_serialization=False)  # pickle .bin only
    with pytest.raises(FileNotFoundError, match="safetensors weights only"):
        load_pipeline(str(tmp_path))


@pytest.mark.parametrize(
    "dtype, device, match", [("float64x", None, "not a torch floating-point dtype"), (None, "cuda", "no CUDA device")]
)
def test_load_pipeline_refuses_bad_dtype_and_device(dtype, device, match):
    from latentalign import load_pipeline

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=match):
        load_pipeline("shapes", dtype=dtype, device=device)


def test_corrupt_saved_files_are_named(tmp_path, latent_scorer, tiny_shapes_path):
    import shutil

    from latentalign import load_pipeline
    from latentalign.checkpoint import load_checkpoint
    from latentalign.scorers import build_shapes_scorer, load_scorer, save_scorer

    save_scorer(latent_scorer, tmp_path / "s")
    weights = tmp_path / "s" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="model.safetensors"):
        load_scorer(tmp_path / "s")
    noisy = build_shapes_scorer("noisy", 0.18215)  # a scorer with a module outside its CLIP
    save_scorer(noisy, tmp_path / "d")
    extra = tmp_path / "d" / "timestep_embedding.safetensors"
    extra.write_bytes(extra.read_bytes()[:50])
    with pytest.raises(ValueError, match="timestep_embedding.safetensors"):
        load_scorer(tmp_path / "d")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "meta.json").write_text('{"step": 3,')  # cut off mid-write
    with pytest.raises(ValueError, match="meta.json"):
        load_checkpoint(tmp_path / "ckpt", {}, None)
    folder = tmp_path / "pipe"
    shutil.copytree(tiny_shapes_path, folder)
    (folder / "latentalign.json").write_text('{"world": "shapes",,}')
    with pytest.raises(ValueError, match="latentalign.json"):
        generate(load_pipeline(str(folder)), "a red circle")
    assert main(["generate", "a red circle", "--model", str(folder), "--out", str(tmp_path / "g")]) == 2


def test_render_takes_whole_seeds():
    from latentalign.world import render

    for bad in (-1, 1.5, "abc", None, True):
        with pytest.raises(ValueError, match="integer >= 0"):
            render("a red circle", bad)
