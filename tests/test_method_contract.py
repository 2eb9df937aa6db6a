"""One contract for every registered stage (as diffusers' PipelineTesterMixin is for pipelines), on the tiny SD,
SDXL and SD3 pipelines: seeded determinism, batched == single, errors before any work, the user's pipeline left
as it was, cost counted, bfloat16 and float16 runs, compiled denoisers, and composition with identity stages."""

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

FAMILIES = ["sd", "sdxl", "sd3"]
PROMPTS = ["a red ball on grass", "a painting of a blue ball"]
KW = {"num_inference_steps": 3, "guidance_scale": 2.0}


def projector(pipe, zero: bool = False) -> NoiseProjector:
    den = Denoiser(pipe)
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
    }[name]()


NAMES = [
    "best-of-n",
    "early-exit",
    "successive-halving",
    "noise-optimization",
    "noise-projection",
    "attention-refinement",
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
        batched = generate(pipe, PROMPTS, method=method, seed=[0, 1], **KW)
        assert state(pipe) == before
        again = generate(pipe, PROMPTS, method=method, seed=[0, 1], **KW)
    finally:
        if hasattr(pipe, "unet") and pipe.unet is not None:
            pipe.unet.eval()
    assert torch.equal(batched.latents, again.latents)
    for i, (p, s) in enumerate(zip(PROMPTS, [0, 1], strict=True)):
        single = generate(pipe, p, method=method, seed=s, **KW)
        torch.testing.assert_close(single.latents[0], batched.latents[i], rtol=1e-3, atol=1e-3)
    plain = generate(pipe, PROMPTS, seed=[0, 1], **KW)
    assert batched.cost.denoiser_evals >= plain.cost.denoiser_evals and batched.cost.seconds > 0
    assert batched.stages[0]["name"] == name and batched.settings["method"] == name
    assert torch.isfinite(batched.latents).all()


@pytest.mark.parametrize("name", NAMES)
def test_errors_come_before_any_work(pipe, name, monkeypatch):
    model = Denoiser(pipe).model

    def boom(*args, **kwargs):
        raise AssertionError("the denoiser ran before the input was checked")

    monkeypatch.setattr(model, "forward", boom)
    with pytest.raises(ValueError, match="num_inference_steps"):
        generate(pipe, PROMPTS, method=stage(name, pipe), seed=[0, 1], num_inference_steps=0)
    with pytest.raises(ValueError, match="seeds"):
        generate(pipe, PROMPTS, method=stage(name, pipe), seed=[0], **KW)
    # by name, outside the Shapes world, every method needs something it has no default for
    with pytest.raises(ValueError, match="scorer=|projector=|words="):
        generate(pipe, PROMPTS, method=name, **KW)


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
    r = generate(pipe, PROMPTS, method=stage(name, pipe), seed=[0, 1], **KW)
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
    alone = generate(pipe, PROMPTS, method=method, seed=[0, 1], **KW)
    others = [identity(p, pipe) for p in ("noise", "steps", "selection") if p != method.place]
    composed = generate(pipe, PROMPTS, method=[method, *others], seed=[0, 1], **KW)
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
