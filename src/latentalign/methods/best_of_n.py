"""Best-of-N with early exit: prune candidates mid-denoising with a noisy-latent scorer (NoisyCLIP, arXiv
2512.08505), in one or several stages (successive halving, as TTSnap prunes at a few early steps)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..adapters import Denoiser
from ..cost import Cost
from ..generate import GenerationResult, resolve, to_pil
from ..sampling import sample
from ..scorers import Scorer

SEED_STRIDE = 1_000_000  # candidate i of seed s draws noise from seed s + i * SEED_STRIDE: candidate 0 is plain
# `early_exit` defaults, chosen on TRAIN-split prompts (benchmarks/results/best_of_n_train/): among one-stage
# NoisyCLIP schedules within half the compute of full pixel-CLIP Best-of-N at N = 4, 8 and 16, the best mean
# accuracy ratio (0.970) was pruning after 30% of the steps, keeping a quarter of the candidates (at least one).
EARLY_EXIT_AT = 0.3
EARLY_EXIT_KEEP = 0.25


@dataclass(frozen=True)
class PruneSchedule:
    """Keep the best `keep[j]` candidates after `steps[j]` denoising steps; () means full Best-of-N."""

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


@dataclass
class BestOfNResult(GenerationResult):
    """The chosen image per prompt, plus every candidate's scores: `scores[p][i]` maps a stage ("step k" or
    "final") to candidate i's score there; `pruned_at[p][i]` is the step it was dropped after (None: finished)."""

    scores: list[list[dict[str, float]]] = field(default_factory=list)
    pruned_at: list[list[int | None]] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    candidate_seeds: list[list[int]] = field(default_factory=list)


def score_candidates(
    scorer: Scorer, den: Denoiser, z: torch.Tensor, x0: torch.Tensor, t, prompt: str, cost: Cost
) -> torch.Tensor:
    """Score candidates in the space the scorer reads: noisy z_t, the x0 prediction, or its decode."""
    cost.scorer_calls += z.shape[0]
    if scorer.space == "noisy_latents":
        return scorer.score(z, prompt, torch.as_tensor(t).long().expand(z.shape[0]))
    if scorer.space == "latents":
        return scorer.score(x0, prompt)
    return scorer.score(den.decode(x0), prompt)


def _run(den, cond, schedulers, latents, start, stop, max_batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps [start, stop) for every candidate, `max_batch` at a time, each on its own scheduler (which carries
    any multistep history on to the next stage); returns (latents, last x0 prediction)."""
    outs, x0s = [], []
    for i in range(0, latents.shape[0], max_batch):
        seen: dict[str, torch.Tensor] = {}
        index = list(range(i, min(i + max_batch, latents.shape[0])))
        rows = schedulers.select(index)
        out = sample(den, latents[index], cond.select(index), rows, start=start, stop=stop, callback=seen.update)
        outs.append(out)
        x0s.append(seen.get("x0", out))
    return torch.cat(outs), torch.cat(x0s)


@torch.no_grad()
def best_of_n(
    pipe,
    prompt: str | list[str],
    *,
    scorer: Scorer,
    n: int = 4,
    seed: int | list[int] = 0,
    schedule: PruneSchedule = PruneSchedule(),
    final_scorer: Scorer | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    max_batch: int = 64,
) -> BestOfNResult:
    """Best-of-N: draw `n` candidates per prompt, prune them per `schedule` with `scorer`, finish the survivors and
    keep the one `final_scorer` (default: `scorer`, at t=0 when it reads noisy latents) likes best."""
    prompts, seeds, steps, scale = resolve(pipe, prompt, seed, num_inference_steps, guidance_scale)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if not isinstance(scorer, Scorer) or (final_scorer is not None and not isinstance(final_scorer, Scorer)):
        raise ValueError("scorer and final_scorer must be latentalign scorers (see latentalign.scorers)")
    schedule.validate(n, steps)
    final_scorer = final_scorer or scorer
    cost = Cost()
    den = Denoiser(pipe, cost)
    chosen_latents, all_scores, all_pruned, chosen, cand_seeds = [], [], [], [], []
    with cost.timed():
        for p, s in zip(prompts, seeds, strict=True):
            candidates = [s + i * SEED_STRIDE for i in range(n)]
            alive = list(range(n))
            scores: list[dict[str, float]] = [{} for _ in range(n)]
            pruned: list[int | None] = [None] * n
            cond_all = den.encode([p] * n, scale)
            latents, schedulers = den.start(candidates, steps)  # row j of both: candidate alive[j]
            timesteps = schedulers.timesteps
            start = 0
            for stop, keep in zip(schedule.steps, schedule.keep, strict=True):
                latents, x0 = _run(den, cond_all.select(alive), schedulers, latents, start, stop, max_batch)
                t = timesteps[stop]
                # noisy-latent scorers read z_t in its DDPM form, sqrt(a) x0 + sqrt(1 - a) eps: the scaled model
                # input (the latents themselves for DDIM; latents / sqrt(sigma^2 + 1) for Euler-type schedulers)
                z = schedulers.scale_model_input(latents, t) if scorer.space == "noisy_latents" else latents
                values = score_candidates(scorer, den, z, x0, t, p, cost)
                for j, v in zip(alive, values.tolist(), strict=True):
                    scores[j][f"step {stop}"] = v
                best = values.argsort(descending=True, stable=True)[:keep].sort().values
                for j in set(range(len(alive))) - set(best.tolist()):
                    pruned[alive[j]] = stop
                alive, latents, start = [alive[j] for j in best.tolist()], latents[best], stop
                schedulers = schedulers.select(best)
            latents, _ = _run(den, cond_all.select(alive), schedulers, latents, start, None, max_batch)
            if len(alive) > 1:
                values = score_candidates(final_scorer, den, latents, latents, 0, p, cost)
                for j, v in zip(alive, values.tolist(), strict=True):
                    scores[j]["final"] = v
                pick = int(values.argmax())
            else:
                pick = 0
            chosen_latents.append(latents[pick : pick + 1])
            all_scores.append(scores)
            all_pruned.append(pruned)
            chosen.append(alive[pick])
            cand_seeds.append(candidates)
        final = torch.cat(chosen_latents)
        images = to_pil(den.decode(final))
    settings = {
        "num_inference_steps": steps,
        "guidance_scale": scale,
        "n": n,
        "prune_steps": list(schedule.steps),
        "keep": list(schedule.keep),
        "scorer": scorer.kind,
        "final_scorer": final_scorer.kind,
    }
    return BestOfNResult(images, final, prompts, seeds, cost, settings, all_scores, all_pruned, chosen, cand_seeds)


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
