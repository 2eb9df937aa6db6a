"""Best-of-N with early exit: prune candidates mid-denoising with a noisy-latent scorer (NoisyCLIP, arXiv
2512.08505), in one or several stages (successive halving, as TTSnap prunes at a few early steps).

Three registered selection stages: "best-of-n" (score finished candidates only), "early-exit" (one pruning stage,
NoisyCLIP's early exit) and "successive-halving" (halve at several early steps). Survivors of every image are
denoised together, up to `max_batch` rows at a time, so the evaluations pruning saves are saved time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..core import check_positive_int
from ..scorers import Scorer
from .base import (
    SEED_STRIDE,
    PruneSchedule,
    SelectionStage,
    check_scorer_reads,
    register,
    resolve_scorer,
)

__all__ = ["SEED_STRIDE", "BestOfN", "EarlyExit", "SuccessiveHalving", "early_exit_schedule"]

# `early-exit` defaults, chosen on TRAIN-split prompts of the current world with the harness
# (benchmarks/configs/early_exit_choice_train.toml, benchmarks/results/early_exit_choice_train/): at N = 8, among
# pruning after 20/30/50% of the steps, keeping 25/50%, with NoisyCLIP or the latent judge reading z_t, the best
# train accuracy (0.793, full Best-of-8 0.796, plain 0.637) was the judge pruning after 30% and keeping half, at
# 208 of Best-of-8's 320 denoiser evaluations. The Shapes pipeline's own latentalign.json overrides them with the
# judge reading the x0 prediction and the judge beside pixel CLIP choosing among the kept (pipeline.SHAPES_EARLY_EXIT:
# after half the steps keeping half, train 0.837 at 240; benchmarks/results/early_exit_choice_sum_train/). These
# stay the defaults elsewhere, and on Shapes for a caller who passes their own scorer or schedule.
EARLY_EXIT_AT = 0.3
EARLY_EXIT_KEEP = 0.5


def early_exit_schedule(n: int, num_inference_steps: int, *, at: float = EARLY_EXIT_AT, keep: float = EARLY_EXIT_KEEP):
    """One pruning stage after `at` of the steps, keeping `keep` of the `n` candidates (NoisyCLIP's early exit)."""
    if n == 1:
        return PruneSchedule()
    step = min(num_inference_steps - 1, max(1, round(at * num_inference_steps)))
    return PruneSchedule((step,), (max(1, round(keep * n)),))


def successive_halving_schedule(n: int, num_inference_steps: int, *, first: float = 0.15, last: float = 0.5):
    """Halve the candidates at evenly spaced steps between `first` and `last` of the schedule, down to one."""
    stages = max(0, (n - 1).bit_length())
    if stages == 0:
        return PruneSchedule()
    fractions = [first + (last - first) * i / max(1, stages - 1) for i in range(stages)]
    steps = sorted({min(num_inference_steps - 1, max(1, round(f * num_inference_steps))) for f in fractions})
    keep, m = [], n
    for _ in steps:
        m = max(1, m // 2)
        keep.append(m)
    return PruneSchedule(tuple(steps), tuple(keep))


def score_rows(scorer: Scorer, run, rows: list[int], view: dict) -> torch.Tensor:
    """Score rows in the space the scorer reads: noisy z_t (in its DDPM form, the scaled model input: the latents
    themselves for DDIM, latents / sqrt(sigma^2 + 1) for Euler-type schedulers), the x0 prediction, or its decode."""
    z, x0 = view["model_input"], view["x0"]
    finite = (torch.isfinite(z).flatten(1).all(1) & torch.isfinite(x0).flatten(1).all(1)).tolist()
    scores = torch.full((len(rows),), -math.inf)  # a candidate gone non-finite is never kept
    keep = [j for j, ok in enumerate(finite) if ok]
    if not keep:
        return scores
    prompts = [run.prompt_of(rows[j]) for j in keep]
    run.cost.scorer_calls += len(keep)
    z, x0 = z[keep], x0[keep]
    if scorer.space == "noisy_latents":
        t = torch.as_tensor(view["t"]).long().to(z.device).expand(z.shape[0])
        values = scorer.score(z, prompts, t)
    elif scorer.reads_pixels:  # a ScoreSum with a pixel member: the pipeline decodes, once
        values = scorer.score(x0, prompts, pixels=run.den.decode(x0))
    elif scorer.space == "latents":
        values = scorer.score(x0, prompts)
    else:
        values = scorer.score(run.den.decode(x0), prompts)
    scores[keep] = values.float().cpu()
    return scores


@register
@dataclass(frozen=True)
class BestOfN(SelectionStage):
    """Best-of-N: draw `n` candidates per image, finish them all and keep the one the scorer likes best."""

    name: ClassVar[str] = "best-of-n"
    # the default scorer on the Shapes world: the latent judge, whose Best-of-8 among the 8 samples of each train
    # prompt it never trained on is 0.720 against pixel CLIP's 0.589 (benchmarks/results/judge_train/); the `shapes`
    # pipeline's latentalign.json names the judge beside pixel CLIP, shapes-judge-pixel (pipeline.SHAPES_BEST_OF_N)
    shapes_scorer: ClassVar[str] = "shapes-judge"

    n: int = 4  # candidates per image
    scorer: Scorer | str | None = None  # a Scorer, a saved folder or shipped name; None: the pipeline's default
    final_scorer: Scorer | str | None = None  # the final pick's scorer (None: `scorer`, at t = 0 if noisy)
    max_batch: int = 64  # candidate rows denoised at once (memory limit; the images do not depend on it)
    # keep every candidate's last latents in `result.candidate_latents` (a pruned one's x0 prediction at its step)
    keep_candidates: bool = False

    def __post_init__(self):
        check_positive_int("n", self.n)
        check_positive_int("max_batch", self.max_batch)
        for name in ("scorer", "final_scorer"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (Scorer, str)):
                raise ValueError(f"{name} must be a Scorer, a folder or a shipped name, got {type(value).__name__}")

    @property
    def candidates(self) -> int:
        return self.n

    def schedule(self, num_inference_steps: int) -> PruneSchedule:
        return PruneSchedule()

    def prepare(self, run) -> BestOfN:
        super().prepare(run)
        scorer = resolve_scorer(self.scorer, run.pipe, self.name, self.shapes_scorer)
        final = None if self.final_scorer is None else resolve_scorer(self.final_scorer, run.pipe, self.name)
        for s in (scorer, final):
            if s is not None:
                check_scorer_reads(s, run.den)
        return replace(self, scorer=scorer, final_scorer=final)

    def score(self, run, rows: list[int], view: dict, final: bool) -> torch.Tensor:
        scorer = (self.final_scorer or self.scorer) if final else self.scorer
        return score_rows(scorer, run, rows, view)


@register
@dataclass(frozen=True)
class EarlyExit(BestOfN):
    """Best-of-N with early exit: after `at` of the steps keep the best `keep_share` of the candidates (scored on
    z_t by a noisy-latent scorer by default), or follow an explicit `prune_steps` / `keep` schedule."""

    name: ClassVar[str] = "early-exit"
    # chosen on train prompts with the schedule (above); the Shapes pipeline's latentalign.json names the x0 reading
    shapes_scorer: ClassVar[str] = "shapes-judge"
    prunes: ClassVar[bool] = True

    prune_steps: tuple[int, ...] | None = None  # explicit schedule: keep keep[j] candidates after prune_steps[j]
    keep: tuple[int, ...] | None = None
    at: float = EARLY_EXIT_AT  # without an explicit schedule: prune after this share of the steps
    keep_share: float = EARLY_EXIT_KEEP  # keeping this share of the candidates (at least one)

    def __post_init__(self):
        super().__post_init__()
        if (self.prune_steps is None) != (self.keep is None):
            raise ValueError("pass prune_steps and keep together")
        if self.prune_steps is not None:
            object.__setattr__(self, "prune_steps", tuple(self.prune_steps))
            object.__setattr__(self, "keep", tuple(self.keep))
        if not 0 < self.at < 1 or not 0 < self.keep_share <= 1:
            raise ValueError(f"at must be in (0, 1) and keep_share in (0, 1], got {self.at} and {self.keep_share}")

    def defaults_not_applying(self) -> set[str]:
        # a pipeline's recommended schedule was chosen with its recommended scorer: a caller's own scorer or
        # explicit schedule keeps the library's `at` / `keep_share` (and an explicit schedule needs neither)
        given = getattr(self, "_given", None) or set()
        skip = {"at", "keep_share"} if given & {"scorer", "prune_steps", "keep"} else set()
        return skip | ({"final_scorer"} if "scorer" in given else set())  # a caller's own scorer also picks

    def schedule(self, num_inference_steps: int) -> PruneSchedule:
        if self.prune_steps is not None:
            return PruneSchedule(self.prune_steps, self.keep)
        return self.default_schedule(num_inference_steps)

    def default_schedule(self, num_inference_steps: int) -> PruneSchedule:
        return early_exit_schedule(self.n, num_inference_steps, at=self.at, keep=self.keep_share)


@register
@dataclass(frozen=True)
class SuccessiveHalving(EarlyExit):
    """Successive halving: halve the candidates at evenly spaced early steps, down to one (TTSnap-style)."""

    name: ClassVar[str] = "successive-halving"
    shapes_scorer: ClassVar[str] = "shapes-noisy"  # not re-chosen: NoisyCLIP, as before

    def default_schedule(self, num_inference_steps: int) -> PruneSchedule:
        return successive_halving_schedule(self.n, num_inference_steps)
