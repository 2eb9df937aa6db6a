"""One contract for every registered stage (as diffusers' PipelineTesterMixin is for pipelines), on the tiny SD,
SDXL, SD3, Flux and PixArt pipelines: seeded determinism, batched == single, errors before any work, the user's
pipeline left as it was, cost counted, bfloat16 and float16 runs, compiled denoisers, and composition with identity
stages."""

from __future__ import annotations

import copy

import pytest
import torch

from latentalign import generate
from latentalign.adapters import Denoiser
from latentalign.methods import (
    AttentionRefinement,
    BestOfN,
    EarlyExit,
    GSNGuidance,
    IterRef,
    NoiseOptimization,
    NoiseProjection,
    NoiseProjector,
    NoiseProjectorConfig,
    Reward,
    SuccessiveHalving,
    compose,
    registered,
)
from latentalign.scorers import build_shapes_scorer, fit_preview_map

FAMILIES = ["sd", "sdxl", "sd3", "flux", "pixart"]
PROMPTS = ["a red ball on grass", "a painting of a blue ball"]
KW = {"num_inference_steps": 3, "guidance_scale": 2.0}


def kw(pipe) -> dict:
    """KW, plus what a family's stock call needs on tiny components (PixArt has no resolution bins for them)."""
    return {**KW, "use_resolution_binning": False} if type(pipe).__name__.startswith("PixArt") else KW


def projector(pipe, zero: bool = False) -> NoiseProjector:
    den = Denoiser(pipe, options={k: v for k, v in kw(pipe).items() if k not in KW})
    torch.manual_seed(0)
    p = NoiseProjector(NoiseProjectorConfig(latent_channels=den.latent_shape[0], text_dim=den.text_dim, width=16))
    if not zero:
        torch.nn.init.normal_(p.out.weight, std=0.3)
    return p.eval()


def scorers(pipe) -> dict:
    scale = pipe.vae.config.scaling_factor
    preview = fit_preview_map(torch.randn(2, 4, 8, 8), torch.rand(2, 3, 32, 32))
    return {
        "latent": build_shapes_scorer("latent", scale),
        "noisy": build_shapes_scorer("noisy", scale, preview_map=preview),
    }


def stage(name: str, pipe):
    """A cheap instance of each registered stage, reading the pipeline it runs on."""
    s = scorers(pipe)
    return {
        "best-of-n": lambda: BestOfN(n=2, scorer=s["latent"]),
        "early-exit": lambda: EarlyExit(n=3, scorer=s["noisy"], final_scorer=s["latent"], prune_steps=(1,), keep=(2,)),
        "successive-halving": lambda: SuccessiveHalving(n=4, scorer=s["noisy"], final_scorer=s["latent"]),
        "noise-optimization": lambda: NoiseOptimization(iterations=1, rewards=[Reward(s["latent"])]),
        "noise-projection": lambda: NoiseProjection(projector=projector(pipe)),
        "attention-refinement": lambda: AttentionRefinement(words=("ball",), max_refine_iterations=1),
        "iterref": lambda: IterRef(words=("ball",), steps=(1,), max_refine_iterations=1),
        "gsn-guidance": lambda: GSNGuidance(words=("ball",), steps=(0,), loss="iou"),
    }[name]()


NAMES = [
    "best-of-n",
    "early-exit",
    "successive-halving",
    "noise-optimization",
    "noise-projection",
    "attention-refinement",
    "iterref",
    "gsn-guidance",
]


def test_every_registered_stage_is_under_contract():
    assert set(NAMES) == set(registered())


@pytest.fixture(params=FAMILIES)
def pipe(request):
    return request.getfixturevalue(f"tiny_{request.param}_pipeline")


def state(pipe) -> dict:
    """What a method must leave as it found it."""
    modules = {k: m for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    model = pipe.transformer if hasattr(pipe, "transformer") and pipe.transformer is not None else pipe.unet
    return {
        "grad": {(k, n): p.requires_grad for k, m in modules.items() for n, p in m.named_parameters()},
        "mode": {(k, n): sub.training for k, m in modules.items() for n, sub in m.named_modules()},
        "processors": {n: id(p) for n, p in model.attn_processors.items()},
        "scheduler": dict(pipe.scheduler.config),
    }


@pytest.mark.parametrize("name", NAMES)
def test_seeded_batched_equals_single_and_leaves_the_pipeline_alone(pipe, name):
    method = stage(name, pipe)
    pipe.unet.train() if hasattr(pipe, "unet") and pipe.unet is not None else None  # an unusual state, kept
    before = state(pipe)
    try:
        batched = generate(pipe, PROMPTS, method=method, seed=[0, 1], **kw(pipe))
        assert state(pipe) == before
        again = generate(pipe, PROMPTS, method=method, seed=[0, 1], **kw(pipe))
    finally:
        if hasattr(pipe, "unet") and pipe.unet is not None:
            pipe.unet.eval()
    assert torch.equal(batched.latents, again.latents)
    for i, (p, s) in enumerate(zip(PROMPTS, [0, 1], strict=True)):
        single = generate(pipe, p, method=method, seed=s, **kw(pipe))
        torch.testing.assert_close(single.latents[0], batched.latents[i], rtol=1e-3, atol=1e-3)
    plain = generate(pipe, PROMPTS, seed=[0, 1], **kw(pipe))
    assert batched.cost.denoiser_evals >= plain.cost.denoiser_evals and batched.cost.seconds > 0
    assert batched.stages[0]["name"] == name and batched.settings["method"] == name
    assert torch.isfinite(batched.latents).all()


@pytest.mark.parametrize("name", NAMES)
def test_errors_come_before_any_work(pipe, name, monkeypatch):
    model = getattr(pipe, "unet", None) or pipe.transformer

    def boom(*args, **kwargs):
        raise AssertionError("the denoiser ran before the input was checked")

    monkeypatch.setattr(model, "forward", boom)
    with pytest.raises(ValueError, match="num_inference_steps"):
        generate(pipe, PROMPTS, method=stage(name, pipe), seed=[0, 1], **{**kw(pipe), "num_inference_steps": 0})
    with pytest.raises(ValueError, match="seeds"):
        generate(pipe, PROMPTS, method=stage(name, pipe), seed=[0], **kw(pipe))
    # by name, outside the Shapes world, every method needs something it has no default for
    with pytest.raises(ValueError, match="scorer=|projector=|words="):
        generate(pipe, PROMPTS, method=name, **kw(pipe))


@pytest.fixture(scope="module", params=[(f, d) for f in FAMILIES for d in ("bfloat16", "float16")])
def low_precision(request):
    family, dtype = request.param
    pipe = copy.deepcopy(request.getfixturevalue(f"tiny_{family}_pipeline"))
    return pipe.to(getattr(torch, dtype))


@pytest.mark.parametrize("name", NAMES)
def test_low_precision(low_precision, name):
    """bfloat16 and float16 pipelines (the CPU has both kernels for these models); SDXL's VAE asks for float32
    decoding (force_upcast), so noise optimisation back-propagates through a float32 copy of it."""
    pipe = low_precision
    r = generate(pipe, PROMPTS, method=stage(name, pipe), seed=[0, 1], **kw(pipe))
    assert r.latents.dtype == pipe.dtype and torch.isfinite(r.latents).all()
    assert pipe.vae.dtype == pipe.dtype  # an upcast VAE is cast back


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["replaced", "in place"])
def test_compiled_denoisers_are_accepted(request, name, how):
    pipe = copy.deepcopy(request.getfixturevalue("tiny_sd_pipeline"))
    reference = generate(pipe, PROMPTS, method=stage(name, pipe), seed=[0, 1], **KW)
    if how == "replaced":
        pipe.unet = torch.compile(pipe.unet, backend="eager")
    else:
        pipe.unet.compile(backend="eager")
    compiled = generate(pipe, PROMPTS, method=stage(name, pipe), seed=[0, 1], **KW)
    torch.testing.assert_close(compiled.latents, reference.latents, rtol=1e-4, atol=1e-4)


def identity(place: str, pipe):
    """A stage at `place` that changes nothing: an untrained projector, zero-step refinement, Best-of-1."""
    return {
        "noise": NoiseProjection(projector=projector(pipe, zero=True)),
        "steps": AttentionRefinement(words=("ball",), step_size=0.0, max_refine_iterations=0),
        "selection": BestOfN(n=1, scorer=scorers(pipe)["latent"]),
    }[place]


@pytest.mark.parametrize("name", NAMES)
def test_identity_stages_compose_to_the_method_alone(pipe, name):
    method = stage(name, pipe)
    alone = generate(pipe, PROMPTS, method=method, seed=[0, 1], **kw(pipe))
    others = [identity(p, pipe) for p in ("noise", "steps", "selection") if p != method.place]
    composed = generate(pipe, PROMPTS, method=[method, *others], seed=[0, 1], **kw(pipe))
    torch.testing.assert_close(composed.latents, alone.latents, rtol=1e-4, atol=1e-4)
    assert [s["place"] for s in composed.stages] == [p for p in ("noise", "steps", "selection")]
    assert composed.settings["method"] == "+".join(s["name"] for s in composed.stages)


def test_compositions_add_up_and_nonsense_is_refused(tiny_sd_pipeline):
    pipe = tiny_sd_pipeline
    s = scorers(pipe)
    project, select = (
        NoiseProjection(projector=projector(pipe)),
        EarlyExit(n=4, scorer=s["noisy"], prune_steps=(1,), keep=(1,)),
    )
    both = generate(pipe, PROMPTS[0], method=[select, project], seed=0, **KW)  # any order: placed in order
    assert [st["name"] for st in both.stages] == ["noise-projection", "early-exit"]
    assert both.cost.projector_calls == 4 and both.cost.scorer_calls == 4  # every candidate projected and scored
    assert both.cost.denoiser_evals == 2 * (4 * 1 + 1 * 2)
    with pytest.raises(ValueError, match="selection place"):
        compose([BestOfN(), EarlyExit()])
    with pytest.raises(ValueError, match="unknown method"):
        compose("noise-projection+best-of-all")
    with pytest.raises(TypeError, match="pass stage objects"):
        compose("noise-optimization+best-of-n", {"scorer": "shapes-latent"})
    with pytest.raises(TypeError, match="takes no option 'n'"):
        compose("noise-projection", {"n": 4})


# Generators shared by rows, stochastic step noise, settings from latentalign.json, exact costs, early errors


def _ddim_eta(pipe):
    """The tiny SD pipeline with DDIM at eta 1: every step draws noise from the rows' generators."""
    from diffusers import DDIMScheduler

    pipe = copy.deepcopy(pipe)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


FOUR = ["a red ball on grass", "a painting of a blue ball", "a blue ball on grass", "a red ball"]


def test_max_batch_changes_nothing_with_a_shared_generator_and_step_noise(tiny_sd_pipeline):
    pipe = _ddim_eta(tiny_sd_pipeline)
    kw = {**KW, "eta": 1.0, "seed": 3}
    # plain, one row at a time: the same step noise (batched kernels move latents by float rounding only)
    one_by_one, together = generate(pipe, FOUR, max_batch=1, **kw).latents, generate(pipe, FOUR, **kw).latents
    torch.testing.assert_close(one_by_one, together, rtol=1e-4, atol=1e-4)
    best = BestOfN(n=2, scorer=scorers(pipe)["latent"])
    small = generate(pipe, FOUR, method=BestOfN(n=2, scorer=best.scorer, max_batch=2), **kw)
    big = generate(pipe, FOUR, method=best, **kw)
    torch.testing.assert_close(small.latents, big.latents, rtol=1e-4, atol=1e-4)
    assert small.chosen == big.chosen


def test_identity_stages_compose_under_a_shared_generator_with_step_noise(tiny_sd_pipeline):
    pipe = _ddim_eta(tiny_sd_pipeline)
    reno = NoiseOptimization(iterations=1, rewards=[Reward(scorers(pipe)["latent"])])
    kw = {**KW, "eta": 1.0, "seed": 3}
    alone = generate(pipe, FOUR[:2], method=reno, **kw)
    steps = AttentionRefinement(words=("ball",), step_size=0.0, max_refine_iterations=0)
    composed = generate(pipe, FOUR[:2], method=[reno, steps], **kw)
    observed = generate(pipe, FOUR[:2], method=reno, callback=lambda info: None, **kw)
    torch.testing.assert_close(composed.latents, alone.latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(observed.latents, alone.latents, rtol=1e-4, atol=1e-4)


def test_a_reused_generator_gives_new_candidates_and_candidate_zero_is_plain(tiny_sd_pipeline):
    pipe = tiny_sd_pipeline
    g = torch.Generator().manual_seed(5)
    method = BestOfN(n=3, scorer=scorers(pipe)["latent"])
    first = generate(pipe, PROMPTS[0], method=method, generator=g, **KW)
    second = generate(pipe, PROMPTS[0], method=method, generator=g, **KW)
    assert first.candidate_seeds[0][1:] != second.candidate_seeds[0][1:]
    assert first.seeds == [None] and first.candidate_seeds[0][0] is None  # a generator's state, not a seed
    plain = generate(pipe, PROMPTS[0], generator=torch.Generator().manual_seed(5), output_type="latent", **KW)
    one = generate(
        pipe, PROMPTS[0], method=BestOfN(n=1, scorer=method.scorer), generator=torch.Generator().manual_seed(5), **KW
    )
    assert torch.equal(one.latents, plain.latents)
    winner = first.chosen[0]
    if winner > 0:  # the winner is its candidate seed's plain image
        again = generate(pipe, PROMPTS[0], seed=first.candidate_seeds[0][winner], **KW)
        torch.testing.assert_close(again.latents, first.latents, rtol=1e-4, atol=1e-4)


def test_latentalign_json_fills_the_options_not_given(tiny_shapes_path, tmp_path):
    import json
    import shutil

    from latentalign import load_pipeline

    folder = tmp_path / "pipe"
    shutil.copytree(tiny_shapes_path, folder)
    defaults = json.loads((folder / "latentalign.json").read_text())
    defaults["best-of-n"] = {"n": 3, "num_inference_steps": 2}
    (folder / "latentalign.json").write_text(json.dumps(defaults))
    pipe = load_pipeline(str(folder))
    latent = scorers(pipe)["latent"]
    r = generate(pipe, "a red circle", method=BestOfN(scorer=latent))
    assert r.settings["n"] == 3 and r.settings["num_inference_steps"] == 2 and len(r.scores[0]) == 3
    r = generate(pipe, "a red circle", method=BestOfN(n=4, scorer=latent), num_inference_steps=3)  # given wins
    assert r.settings["n"] == 4 and r.settings["num_inference_steps"] == 3
    defaults["best-of-n"] = {"m": 3}
    (folder / "latentalign.json").write_text(json.dumps(defaults))
    with pytest.raises(ValueError, match="'best-of-n' has no option 'm'"):
        generate(load_pipeline(str(folder)), "a red circle", method=BestOfN(scorer=latent))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("best-of-n", {"denoiser_evals": 2 * 2 * 3, "scorer_calls": 2}),  # n x guided x steps; the final pick
        ("early-exit", {"denoiser_evals": 2 * (3 * 1 + 2 * 2), "scorer_calls": 3 + 2}),
        ("noise-optimization", {"denoiser_evals": 2 * 2 * 3, "scorer_calls": 2}),  # 2 iterates x guided x steps
        ("noise-projection", {"denoiser_evals": 2 * 3, "projector_calls": 1}),
    ],
)
def test_cost_is_counted_exactly(tiny_sd_pipeline, name, expected):
    r = generate(tiny_sd_pipeline, PROMPTS[0], method=stage(name, tiny_sd_pipeline), seed=0, **KW)
    assert {k: getattr(r.cost, k) for k in expected} == expected and r.cost.seconds > 0


@pytest.mark.parametrize(
    "method, kwargs, match",
    [
        (lambda p: EarlyExit(n=2, scorer=scorers(p)["noisy"], prune_steps=(3,), keep=(1,)), {}, "prune steps"),
        (lambda p: AttentionRefinement(words=("dragon",)), {}, "not a word"),
        (lambda p: NoiseProjection(projector=NoiseProjector(NoiseProjectorConfig(text_dim=7, width=16))), {}, "7-wide"),
        (lambda p: BestOfN(n=2, scorer=scorers(p)["latent"]), {"height": 32, "width": 32}, "8x8 latents"),
        (lambda p: NoiseOptimization(rewards=[Reward(scorers(p)["latent"])]), {"height": 32, "width": 32}, "8x8"),
        (lambda p: AttentionRefinement(words=("ball",)), {"cross_attention_kwargs": {}}, "cannot honour"),
    ],
)
def test_stage_errors_come_before_any_work(tiny_sd_pipeline, monkeypatch, method, kwargs, match):
    pipe = tiny_sd_pipeline
    built = method(pipe)
    for module in (pipe.unet, pipe.text_encoder, pipe.vae):
        monkeypatch.setattr(module, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work began")))
    with pytest.raises((ValueError, TypeError), match=match):
        generate(pipe, PROMPTS[0], method=built, seed=0, **{**KW, **kwargs})


def test_compiled_sd3_transformer_is_accepted(tiny_sd3_pipeline):
    pipe = copy.deepcopy(tiny_sd3_pipeline)
    method = stage("attention-refinement", pipe)
    reference = generate(pipe, PROMPTS, method=method, seed=[0, 1], **KW)
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    compiled = generate(pipe, PROMPTS, method=method, seed=[0, 1], **KW)
    torch.testing.assert_close(compiled.latents, reference.latents, rtol=1e-4, atol=1e-4)


def test_callback_on_step_end_sees_every_row_once_per_step(tiny_sd_pipeline):
    seen = []

    def callback(pipe, step, t, tensors):
        seen.append((step, tensors["latents"].shape[0]))
        return {}

    method = EarlyExit(n=3, scorer=scorers(tiny_sd_pipeline)["noisy"], prune_steps=(1,), keep=(1,), max_batch=2)
    generate(tiny_sd_pipeline, PROMPTS, method=method, seed=[0, 1], callback_on_step_end=callback, **KW)
    assert seen == [(0, 6), (1, 2), (2, 2)]  # 2 images x 3 candidates, then the 2 survivors; chunks of 2 merged
