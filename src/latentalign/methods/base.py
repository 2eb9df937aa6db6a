"""Methods as stages of one generation, and the registry that names them.

A stage acts at one place of the shared run (`latentalign.engine`):
- "noise": it changes the initial noise of every candidate (noise projection, noise optimisation);
- "steps": it changes z_t before the denoiser call of chosen steps (attention refinement);
- "selection": it draws several candidates per image, may prune them mid-denoising, and keeps one (Best-of-N).
A composition holds at most one stage per place and runs them in that order; `generate(method=...)` takes a
registered name, a stage object, or a sequence of either ("noise-projection+early-exit" on the command line).

Each stage is a frozen dataclass whose fields are its options, with commented defaults; fields left None are
filled from the pipeline folder's `latentalign.json` key of the method's name, then from the stage's own defaults.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..core import SEED_LIMIT, sampling_defaults

if TYPE_CHECKING:
    from ..engine import Run

SEED_STRIDE = 1_000_000  # candidate i of image seed s draws noise from seed s + i * SEED_STRIDE: candidate 0 is plain
PLACES = ("noise", "steps", "selection")  # where a stage acts, in the order the run reaches them
RUN_SETTINGS = ("num_inference_steps", "guidance_scale")  # a method's latentalign.json key may recommend these
_REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available by its `name` to `generate`, the CLI and the benchmarks. The
    stage's constructor then remembers which options were given, so a pipeline's latentalign.json fills only the
    others (`with_pipeline_defaults`)."""
    if cls.place not in PLACES:
        raise ValueError(f"stage {cls.__name__} acts at {cls.place!r}; places are {PLACES}")
    if not cls.name or cls.name in _REGISTRY or cls.name == "plain":
        raise ValueError(f"stage name {cls.name!r} is empty, taken or reserved")
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        names = [f.name for f in fields(cls)]
        object.__setattr__(self, "_given", frozenset(names[: len(args)]) | frozenset(kwargs))

    cls.__init__ = __init__
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Stage]]:
    """Every registered stage by name (importing `latentalign.methods` registers the shipped ones)."""
    from .. import methods  # noqa: F401  (the method modules register themselves on import)

    return dict(_REGISTRY)


def method_names() -> tuple[str, ...]:
    """What `generate(method=...)` and `--method` take: "plain", then every registered stage."""
    stages = sorted(registered().values(), key=lambda cls: PLACES.index(cls.place))  # stable: registration order
    return ("plain", *(cls.name for cls in stages))


@dataclass(frozen=True)
class Stage:
    """A method: options as dataclass fields; `name` registers it, `place` says where it acts."""

    name: ClassVar[str] = ""
    place: ClassVar[str] = ""
    # run settings this method uses when neither the call nor the pipeline's latentalign.json sets them
    run_defaults: ClassVar[dict[str, Any]] = {}
    # stock call arguments the method cannot honour (refused with a message naming both)
    refuses: ClassVar[tuple[str, ...]] = ()
    needs_prompt_text: ClassVar[bool] = False  # it reads the prompt's words (a scorer, token positions)
    # it changes the pipeline's modules while it runs (requires_grad, attention processors): the run restores them
    changes_the_pipeline: ClassVar[bool] = False
    differentiates_denoiser: ClassVar[bool] = False  # back-propagates through denoiser calls (Cost counts them)

    def with_pipeline_defaults(self, pipe) -> Stage:
        """This stage with its None fields filled from the pipeline's latentalign.json key for this method."""
        recommended = sampling_defaults(pipe).for_method(self.name)
        own = {f.name for f in fields(self)}
        unknown = set(recommended) - own - set(RUN_SETTINGS)
        if unknown:
            source = sampling_defaults(pipe).source
            raise ValueError(f"{source}: {self.name!r} has no option {sorted(unknown)[0]!r} (options: {sorted(own)})")
        given = getattr(self, "_given", None)  # options passed to the constructor win over the file's
        unset = (lambda k: k not in given) if given is not None else (lambda k: getattr(self, k) is None)
        skip = self.defaults_not_applying()
        changes = {k: v for k, v in recommended.items() if k in own and unset(k) and k not in skip}
        return replace(self, **changes) if changes else self

    def defaults_not_applying(self) -> set[str]:
        """Options of the pipeline's latentalign.json that this stage's own settings make moot (none by default)."""
        return set()

    def run_settings(self, pipe) -> dict[str, Any]:
        """Run settings this method recommends on `pipe`: its latentalign.json key's, else `run_defaults`."""
        recommended = sampling_defaults(pipe).for_method(self.name)
        return {**self.run_defaults, **{k: v for k, v in recommended.items() if k in RUN_SETTINGS}}

    def prepare(self, run: Run) -> Stage:
        """Check the stage against the resolved run and load what it needs (scorers, projectors): before any
        denoiser call. Returns the stage to run (e.g. with a scorer name resolved)."""
        return self

    def record(self) -> dict[str, Any]:
        """The settings the result reports for this stage (scorers and projectors by kind, not by object)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            plain = isinstance(value, (int, float, str, bool, type(None), tuple, list))
            out[f.name] = value if plain else describe(value)
        return out


def resolve_scorer(scorer, pipe, method: str, shapes_default: str | None = None):
    """A scorer object, a saved scorer folder or shipped name ("shapes-noisy"), or None for the method's default on
    the Shapes world; a name is loaded once per process (`scorers.shared_scorer`)."""
    from ..scorers import Scorer, shared_scorer

    if isinstance(scorer, Scorer):
        return scorer
    if scorer is None:
        if sampling_defaults(pipe).world != "shapes" or shapes_default is None:
            raise ValueError(f"method {method!r} needs scorer=... outside the Shapes world (see latentalign.scorers)")
        scorer = shapes_default
    if not isinstance(scorer, str):
        raise ValueError(f"scorer must be a Scorer, a folder or a shipped name, got {type(scorer).__name__}")
    return shared_scorer(scorer, vae=pipe.vae).for_pipeline_latents(pipe.vae)


def check_scorer_reads(scorer, den) -> None:
    """Refuse, before any work, a scorer that cannot read this pipeline's latents (or their decode): its check on a
    blank input of the run's shape."""
    channels, height, width = den.latent_shape
    if scorer.space == "pixels":
        blank = torch.zeros(1, 3, *den.image_size)
    else:
        blank = torch.zeros(1, channels, height, width)
    t = torch.zeros(1, dtype=torch.long) if scorer.space == "noisy_latents" else None
    scorer.check_input(blank, t)


def describe(value) -> str:
    """A short, JSON-friendly name for an option's object (a scorer's kind, a projector's class)."""
    return str(getattr(value, "kind", None) or type(value).__name__)


@dataclass(frozen=True)
class NoiseStage(Stage):
    """Changes the initial noise of every row (standard Gaussian, before the scheduler's init_noise_sigma)."""

    place: ClassVar[str] = "noise"

    def initial_noise(
        self, run: Run, noise: torch.Tensor, rows: list[int], generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the new noise, and optionally each row's finished latents when the stage already sampled the run's
        schedule from it, which the run then reuses where nothing acts after the noise). `generators` are the
        rows' step-noise generators, not to be advanced (clone them)."""
        raise NotImplementedError


@dataclass(frozen=True)
class StepStage(Stage):
    """Changes z_t before the denoiser call of the steps it chooses."""

    place: ClassVar[str] = "steps"

    def hook(self, run: Run) -> Callable[[dict], torch.Tensor]:
        """A `prepare` function for the shared loop: it gets `{"step", "t", "latents", "rows", "schedulers"}` for
        the rows being denoised and returns their latents to use."""
        raise NotImplementedError


@dataclass(frozen=True)
class PruneSchedule:
    """Keep the best `keep[j]` candidates of each image after `steps[j]` denoising steps; () means full Best-of-N."""

    steps: tuple[int, ...] = ()
    keep: tuple[int, ...] = ()

    def validate(self, n: int, num_inference_steps: int) -> None:
        if len(self.steps) != len(self.keep):
            raise ValueError(f"prune steps {self.steps} and keep counts {self.keep} differ in length")
        if list(self.steps) != sorted(set(self.steps)) or any(not 0 < s < num_inference_steps for s in self.steps):
            last = num_inference_steps - 1
            raise ValueError(f"prune steps must increase strictly within 1..{last}, got {self.steps}")
        previous = n
        for k in self.keep:
            if not 1 <= k <= previous:
                raise ValueError(f"keep counts must not increase and stay within 1..{n}, got {self.keep}")
            previous = k


@dataclass(frozen=True)
class SelectionStage(Stage):
    """Draws `n` candidates per image, prunes them on a schedule and keeps the best one."""

    place: ClassVar[str] = "selection"
    needs_prompt_text: ClassVar[bool] = True

    prunes: ClassVar[bool] = False  # it drops candidates mid-denoising (so it needs two steps or more)

    @property
    def candidates(self) -> int:
        raise NotImplementedError

    def schedule(self, num_inference_steps: int) -> PruneSchedule:
        raise NotImplementedError

    def prepare(self, run: Run) -> Stage:
        """The schedule fits the run's steps, and every candidate's seed stays below 2**32."""
        n = self.candidates
        if self.prunes and n > 1 and run.steps < 2:
            raise ValueError(f"{self.name} prunes mid-denoising: it needs num_inference_steps >= 2, got {run.steps}")
        self.schedule(run.steps).validate(n, run.steps)
        last = max((s for s in run.seeds if s is not None), default=0) + (n - 1) * SEED_STRIDE
        if last >= SEED_LIMIT:
            raise ValueError(f"with n={n}, the last candidate seed would be {last}: from 2**32 on seeds repeat")
        return self

    def score(self, run: Run, rows: list[int], view: dict, final: bool) -> torch.Tensor:
        """Scores of the rows (higher is better). `view` holds their "latents" (z_t), "model_input" (z_t as the
        model reads it: DDPM form), "x0" (the last x0 prediction) and "t"; at the end (`final`), all are the
        finished latents and t = 0."""
        raise NotImplementedError


@dataclass(frozen=True)
class Composition:
    """The stages of one generation, at most one per place, in the order they act."""

    stages: tuple[Stage, ...] = ()

    def at(self, place: str) -> Stage | None:
        return next((s for s in self.stages if s.place == place), None)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def label(self) -> str:
        return "+".join(self.names) or "plain"


def compose(method, options: dict[str, Any] | None = None) -> Composition:
    """A composition from `method`: "plain", a registered name, "a+b", a stage object, or a sequence of names and
    stages; `options` are given to the stages named by string, each to the one stage that has that field."""
    options = dict(options or {})
    if isinstance(method, str):
        items: Sequence = [m for m in method.split("+")] if method != "plain" else []
    elif isinstance(method, Stage):
        items = [method]
    elif isinstance(method, (list, tuple)):
        items = list(method)
    else:
        raise ValueError(f"method must be a name, a stage or a sequence of them, got {type(method).__name__}")
    registry = registered()
    named = [m for m in items if isinstance(m, str)]
    stages: list[Stage | None] = []
    for m in items:
        if isinstance(m, Stage):
            stages.append(m)
        elif isinstance(m, str) and m.strip() in registry:
            stages.append(None)  # built below, once the options are routed
        elif isinstance(m, str) and m.strip() == "plain":
            raise ValueError("'plain' cannot be composed: it is the composition with no stage")
        else:
            raise ValueError(f"unknown method {m!r}: choose from {', '.join(method_names())}")
    routed: dict[str, dict[str, Any]] = {m.strip(): {} for m in named}
    for key, value in options.items():
        takers = [m for m in routed if key in {f.name for f in fields(registry[m.strip()])}]
        if not takers:
            where = " + ".join(routed) if routed else "plain generation"
            raise TypeError(f"{where} takes no option {key!r}")
        if len(takers) > 1:
            raise TypeError(f"option {key!r} fits {' and '.join(takers)}: pass stage objects instead")
        routed[takers[0]][key] = value
    it = iter(named)
    built = [s if s is not None else registry[(n := next(it).strip())](**routed[n]) for s in stages]
    places = [s.place for s in built]
    for place in PLACES:
        if places.count(place) > 1:
            clash = " and ".join(s.name for s in built if s.place == place)
            raise ValueError(f"{clash} both act at the {place} place; compose at most one stage per place")
    return Composition(tuple(sorted(built, key=lambda s: PLACES.index(s.place))))
