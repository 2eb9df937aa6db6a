"""Attend-and-Excite (Chefer et al., 2023): refine z_t along the gradient of an attention loss at A&E's schedule.

This module also holds what every generative-semantic-nursing mode shares (`AttentionGuidance`): the subject and
modifier tokens, the maps, the loss (`latentalign.attention_losses`, Attend-and-Excite by default) and the update.
At a step the prompt branch's image-to-text attention (heads and layers averaged at one resolution) gives each
token group a map over the latent grid (`attention_losses.token_maps`); z_t moves by -alpha_i * grad. At a refine
step it is updated until the loss falls to the threshold's target (`AttentionLoss.threshold_target`; for A&E's
loss, 1 - threshold) or `max_refine_iterations` extra updates; at an update step it takes one update.
A&E's schedule (this module's "attention-refinement") refines at steps {0, 10, 20} of 50 with thresholds 0.05,
0.5, 0.8 and updates once at each of the first 25; IterRef at chosen steps is `methods.iterref`, GSN guidance (one
update per chosen step) `methods.gsn_guidance`.
On UNet pipelines (SD 1.x/2.x/XL) the maps are the cross-attention layers'; on SD3 (flow matching) they are the
joint attention's image-to-text block, renormalised over the text keys, and the tokens are positions among CLIP's
77 tokens (T5's follow them); on Flux the double- and single-stream blocks' image-to-text attention over T5's
tokens; on PixArt its cross-attention. No mode reads self-attention (InitNO's conflict term would).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attention_losses import AttentionLoss, attention_loss, token_groups, token_maps
from ..core import check_positive_int, sampling_defaults
from .base import StepStage, register


def _words(name: str, value) -> tuple | None:
    if value is None:
        return None
    words = (value,) if isinstance(value, str) else tuple(value)
    if not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise ValueError(f"{name} must be non-empty strings, got {value!r}")
    return words


def check_step_indices(name: str, steps) -> tuple[int, ...] | None:
    """Step indices as a sorted tuple of distinct non-negative integers (None stays None)."""
    if steps is None:
        return None
    steps = (steps,) if isinstance(steps, int) else tuple(steps)
    if not steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
        raise ValueError(f"{name} must be step indices (integers >= 0), got {steps!r}")
    return tuple(sorted(set(steps)))


@dataclass(frozen=True)
class AttentionGuidance(StepStage):
    """What the attention-guidance modes share; each mode says at which steps it refines and updates (`schedule`).
    Every row of the run is refined on its own (its own tokens, loss and threshold), the rows of a step in one
    batch. `words`: the subject words, the same for every prompt; `attributes`: (modifier, noun) pairs for losses
    that bind them (SynGen); on the Shapes world both default to each prompt's shape nouns and their colours."""

    needs_prompt_text: ClassVar[bool] = True
    changes_the_pipeline: ClassVar[bool] = True  # storing attention processors while it reads the maps
    differentiates_denoiser: ClassVar[bool] = True  # each loss's gradient goes through the prompt branch
    # the storing processors that read the maps replace the model's own (and ignore processor arguments)
    refuses: ClassVar[tuple[str, ...]] = ("cross_attention_kwargs", "joint_attention_kwargs")

    words: tuple[str, ...] | None = None
    attributes: tuple[tuple[str, str], ...] | None = None
    loss: str | AttentionLoss = "attend-and-excite"  # a name from attention_losses.loss_names(), or a loss object
    max_refine_iterations: int = 20  # extra updates at a refine step, at most
    step_size: float = 20.0  # alpha_i = step_size * sqrt(linspace(scale_range)[i])
    scale_range: tuple[float, float] = (1.0, 0.5)
    resolution: int | None = None  # attention grid side; None: the UNet's cross-attention grid closest to 16
    smooth: bool = True  # Gaussian smoothing of each token's map (kernel 3, sigma 0.5)

    def __post_init__(self):
        object.__setattr__(self, "words", _words("words", self.words))
        if self.attributes is not None:
            pairs = tuple(tuple(p) for p in self.attributes)
            if not pairs or not all(len(p) == 2 and _words("attributes", p) for p in pairs):
                raise ValueError(f"attributes are (modifier, noun) word pairs, got {self.attributes!r}")
            object.__setattr__(self, "attributes", pairs)
        attention_loss(self.loss)  # a known name, checked before any work
        check_positive_int("max_refine_iterations", self.max_refine_iterations, minimum=0)
        if isinstance(self.step_size, bool) or not math.isfinite(self.step_size) or self.step_size < 0:
            raise ValueError(f"step_size must be finite and >= 0, got {self.step_size}")
        if self.resolution is not None:
            check_positive_int("resolution", self.resolution)

    def schedule(self, steps: int) -> tuple[dict[int, float], set[int]]:
        """({refine step: threshold}, {update steps}) for a run of `steps` denoising steps."""
        raise NotImplementedError

    def _plan(self, run) -> dict:
        den = run.den
        available = den.cross_attention_resolutions()
        size = self.resolution or min(available, key=lambda s: (abs(s - 16), -s))
        if size not in available:
            raise ValueError(f"no cross-attention layer works at {size}x{size}; the model has {available}")
        tokenizer, text = den.attention_tokenizer, den.attention_text  # the text as the tokenizer gets it
        words = None if self.words is None else [text(w) for w in self.words]
        pairs = None if self.attributes is None else [(text(m), text(n)) for m, n in self.attributes]
        shapes = sampling_defaults(run.pipe).world == "shapes"
        loss = attention_loss(self.loss)
        groups = {}
        for p in sorted(set(run.prompts)):
            try:
                groups[p] = token_groups(tokenizer, text(p), words, pairs, shapes_world=shapes)
            except ValueError as e:
                raise ValueError(f"{self.name}: {e}") from None
            if loss.reads_modifiers and not groups[p].modifiers:
                raise ValueError(f"{self.name}: the {loss.name} loss needs attribute-noun pairs, {p!r} has none")
        lasts = {p: len(tokenizer(text(p)).input_ids) - 1 for p in groups}
        first = int(tokenizer.bos_token_id is not None and tokenizer("").input_ids[:1] == [tokenizer.bos_token_id])
        refine, update = self.schedule(run.steps)
        late = [s for s in (*refine, *update) if s >= run.steps]
        if late:
            raise ValueError(f"{self.name}: step {late[0]} is past the run's {run.steps} steps (0..{run.steps - 1})")
        lo, hi = self.scale_range
        last = max(run.steps - 1, 1)
        return {
            "size": size,
            "groups": groups,
            "lasts": lasts,
            "first": first,
            "loss": loss,
            "refine": refine,
            "update": update,
            "alphas": [self.step_size * math.sqrt(lo + (hi - lo) * i / last) for i in range(run.steps)],
        }

    def prepare(self, run) -> AttentionGuidance:
        plan = self._plan(run)  # token groups, steps and the attention grid, checked before any work
        run.settings.update(
            resolution=plan["size"],
            loss=plan["loss"].name,
            refine_steps=sorted(plan["refine"]),
            update_steps=sorted(plan["update"]),
            subject_tokens=[plan["groups"][p].positions for p in run.prompts],
            token_groups=[plan["groups"][p].describe() for p in run.prompts],
        )
        return self

    def row_loss(self, plan, attention: torch.Tensor, prompt: str, grid) -> torch.Tensor:
        """One row's loss from its (pixels, text tokens) attention."""
        maps = token_maps(attention, plan["groups"][prompt], plan["first"], plan["lasts"][prompt], grid, self.smooth)
        return plan["loss"](maps)["loss"]

    def hook(self, run):
        plan, den = self._plan(run), run.den
        size, refine, update_steps, alphas = plan["size"], plan["refine"], plan["update"], plan["alphas"]
        target = {i: plan["loss"].threshold_target(th) for i, th in refine.items()}
        grid = den.attention_grid(size)  # (height, width): non-square images have non-square maps
        rows_total = run.images * run.n  # per row: the loss at each step where it was computed, extra updates
        losses: list[dict[int, float]] = [{} for _ in range(rows_total)]
        refined: list[dict[int, float]] = [{} for _ in range(rows_total)]  # at refine steps: the loss reached
        iterations = [0] * rows_total
        skipped = [0] * rows_total  # updates refused because they would make z_t non-finite
        run.outputs.update(
            losses=losses, refined_losses=refined, refine_iterations=iterations, skipped_refinements=skipped
        )

        def update(z, step, grad, rows):
            """z - step * grad where that stays finite; a row whose update would not keeps its z_t (and counts)."""
            moved = z - step * grad
            finite = torch.isfinite(moved).flatten(1).all(1)
            for j in (~finite).nonzero().flatten().tolist():
                skipped[rows[j]] += 1
            return torch.where(finite[:, None, None, None], moved, z)

        def loss_and_grad(z, t, rows, schedulers):
            with torch.enable_grad():  # gradients opened for this step only
                z = z.detach().requires_grad_(True)
                maps = den.cross_attention(schedulers.scale_model_input(z, t), t, run.row_cond(rows), size)
                per_row = torch.stack(
                    [self.row_loss(plan, maps[j].float(), run.prompt_of(r), grid) for j, r in enumerate(rows)]
                )
                (grad,) = torch.autograd.grad(per_row.sum(), z)
            den.cost.denoiser_backwards += z.shape[0]  # counted as a whole backward, though it stops at the maps
            return per_row.detach(), torch.nan_to_num(grad)

        def prepare(info) -> torch.Tensor:
            i, t, z, rows, schedulers = info["step"], info["t"], info["latents"], info["rows"], info["schedulers"]
            if i not in update_steps and i not in refine:
                return z
            loss, grad = loss_and_grad(z, t, rows, schedulers)
            for j, r in enumerate(rows):
                losses[r][i] = float(loss[j])
            if i in refine:
                for _ in range(self.max_refine_iterations):
                    todo = [j for j in range(len(rows)) if float(loss[j]) > target[i]]
                    if not todo:
                        break
                    z = z.clone()
                    z[todo] = update(z[todo], alphas[i], grad[todo], [rows[j] for j in todo])
                    sub = schedulers if len(todo) == len(rows) else schedulers.select(todo)
                    new_loss, new_grad = loss_and_grad(z[todo], t, [rows[j] for j in todo], sub)
                    loss, grad = loss.clone(), grad.clone()
                    loss[todo], grad[todo] = new_loss, new_grad
                    for j in todo:
                        iterations[rows[j]] += 1
                for j, r in enumerate(rows):
                    refined[r][i] = float(loss[j])
            if i in update_steps:
                z = update(z, alphas[i], grad, rows)
            return z.detach()

        return prepare


@register
@dataclass(frozen=True)
class AttentionRefinement(AttentionGuidance):
    """Attend-and-Excite's schedule: refinement at fractions of the steps, one update a step before `update_until`."""

    name: ClassVar[str] = "attention-refinement"

    # (fraction of the steps, loss threshold): A&E refines at steps {0, 10, 20} of 50 with thresholds 0.05, 0.5, 0.8
    refine_at: tuple[tuple[float, float], ...] = ((0.0, 0.05), (0.2, 0.5), (0.4, 0.8))
    update_until: float = 0.5  # one update per step for this fraction of the steps (A&E: 25 of 50)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "refine_at", tuple(tuple(x) for x in self.refine_at))
        if not all(len(x) == 2 and 0 <= x[0] < 1 and 0 <= x[1] <= 1 for x in self.refine_at):
            raise ValueError(f"refine_at takes (fraction in [0, 1), threshold in [0, 1]) pairs, got {self.refine_at}")
        if not 0 <= self.update_until <= 1:
            raise ValueError(f"update_until must be in [0, 1], got {self.update_until}")

    def schedule(self, steps: int) -> tuple[dict[int, float], set[int]]:
        refine = {min(steps - 1, round(f * steps)): th for f, th in self.refine_at}
        return refine, set(range(round(self.update_until * steps)))
