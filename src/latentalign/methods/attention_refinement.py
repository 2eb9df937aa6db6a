"""Attend-and-Excite (Chefer et al., 2023) with refinement at chosen steps (IterRef; Grimal et al., step selection
for GSN): move z_t along the gradient of a cross-attention loss so that every subject token gets a strong region.

At each step the prompt branch's cross-attention maps (heads and layers averaged at one resolution) give, per
subject token, a map over the latent grid: start token dropped, x100, softmax over tokens, Gaussian smoothing
(3x3, sigma 0.5). The loss is max over subjects of (1 - max over pixels). z_t takes one gradient step at each of
the first `update_until` of the steps, and at the `refine_at` steps it is refined until the loss is at most
1 - threshold (or `max_refine_iterations` extra steps). On UNet pipelines (SD 1.x/2.x/XL) the maps are the
cross-attention layers'; on SD3 (flow matching) they are the joint attention's image-to-text block, renormalised
over the text keys, and the subject tokens are positions among CLIP's 77 tokens (T5's follow them); on Flux
the double- and single-stream blocks' image-to-text attention over T5's tokens; on PixArt its cross-attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core import check_positive_int, sampling_defaults
from .base import StepStage, register


def subject_tokens(pipe, prompt: str, words: list[str] | None, tokenizer=None) -> list[int]:
    """Token positions of the subject words in the prompt's encoding by `tokenizer` (the pipeline's first by
    default; Flux's attention reads T5's): each word's first sub-token, every time it occurs. On the Shapes world
    the default subjects are the prompt's shape nouns."""
    tokenizer = pipe.tokenizer if tokenizer is None else tokenizer
    if words is None:
        if sampling_defaults(pipe).world != "shapes":
            raise ValueError("attention refinement needs words=[...]: the subject words of the prompt to excite")
        from ..world import vocabulary

        shapes = set(vocabulary()["shapes"])
        words = [w for w in prompt.split() if w in shapes or w[:-1] in shapes]  # "circle", "circles"
    ids = tokenizer(prompt).input_ids
    positions = []
    for word in words:
        first = tokenizer(word, add_special_tokens=False).input_ids[:1]
        found = [i for i, tok in enumerate(ids) if first and tok == first[0]]
        if not found:
            raise ValueError(f"{word!r} is not a word of the prompt {prompt!r}")
        positions += found
    if not positions:
        raise ValueError(f"no subject word to excite in {prompt!r}")
    return sorted(set(positions))


def gaussian_smooth(maps: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """3x3 Gaussian smoothing of (n, h, w) maps with reflected borders, as Attend-and-Excite smooths them."""
    x = torch.arange(3, dtype=maps.dtype, device=maps.device) - 1
    k = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (k[:, None] * k[None, :]) / (k.sum() ** 2)
    padded = F.pad(maps[:, None], (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel[None, None])[:, 0]


def attend_and_excite_loss(
    maps: torch.Tensor,
    tokens: list[int],
    last: int,
    smooth: bool = True,
    grid: tuple[int, int] | None = None,
    first: int = 1,
) -> torch.Tensor:
    """max over subject tokens of 1 - max_p A_token[p] for one prompt's maps (size^2, tokens); `last` is the end
    token's position, `first` the first word's (1 after CLIP's start token, 0 for T5, which has none): tokens
    from `first` to last - 1 compete in the softmax."""
    side = int(math.isqrt(maps.shape[0]))
    height, width = grid if grid is not None else (side, side)
    text = (maps[:, first:last] * 100).softmax(-1)
    per_token = text[:, [i - first for i in tokens]].T.reshape(len(tokens), height, width)
    if smooth:
        per_token = gaussian_smooth(per_token)
    return (1 - per_token.flatten(1).max(-1).values).max()


@register
@dataclass(frozen=True)
class AttentionRefinement(StepStage):
    """Attend-and-Excite with IterRef-style refinement at chosen steps; every row of the run is refined on its own
    (its own subject tokens, loss and threshold), the rows of a step in one batch. `words`: the subject words, the
    same for every prompt; on the Shapes world they default to each prompt's shape nouns."""

    name: ClassVar[str] = "attention-refinement"
    needs_prompt_text: ClassVar[bool] = True
    changes_the_pipeline: ClassVar[bool] = True  # storing attention processors while it reads the maps
    # the storing processors that read the maps replace the model's own (and ignore processor arguments)
    refuses: ClassVar[tuple[str, ...]] = ("cross_attention_kwargs", "joint_attention_kwargs")

    words: tuple[str, ...] | None = None
    # (fraction of the steps, loss threshold): A&E refines at steps {0, 10, 20} of 50 with thresholds 0.05, 0.5, 0.8
    refine_at: tuple[tuple[float, float], ...] = ((0.0, 0.05), (0.2, 0.5), (0.4, 0.8))
    max_refine_iterations: int = 20  # extra updates at a refine step, at most
    update_until: float = 0.5  # one update per step for this fraction of the steps (A&E: 25 of 50)
    step_size: float = 20.0  # alpha_i = step_size * sqrt(linspace(scale_range)[i])
    scale_range: tuple[float, float] = (1.0, 0.5)
    resolution: int | None = None  # attention grid side; None: the UNet's cross-attention grid closest to 16
    smooth: bool = True  # Gaussian smoothing of each token's map (kernel 3, sigma 0.5)

    def __post_init__(self):
        if self.words is not None:
            words = (self.words,) if isinstance(self.words, str) else tuple(self.words)
            if not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise ValueError(f"words must be non-empty strings, got {self.words!r}")
            object.__setattr__(self, "words", words)
        object.__setattr__(self, "refine_at", tuple(tuple(x) for x in self.refine_at))
        if not all(len(x) == 2 and 0 <= x[0] < 1 and 0 <= x[1] <= 1 for x in self.refine_at):
            raise ValueError(f"refine_at takes (fraction in [0, 1), threshold in [0, 1]) pairs, got {self.refine_at}")
        check_positive_int("max_refine_iterations", self.max_refine_iterations, minimum=0)
        if not 0 <= self.update_until <= 1:
            raise ValueError(f"update_until must be in [0, 1], got {self.update_until}")
        if isinstance(self.step_size, bool) or not math.isfinite(self.step_size) or self.step_size < 0:
            raise ValueError(f"step_size must be finite and >= 0, got {self.step_size}")
        if self.resolution is not None:
            check_positive_int("resolution", self.resolution)

    def _plan(self, run) -> dict:
        den = run.den
        available = den.cross_attention_resolutions()
        size = self.resolution or min(available, key=lambda s: (abs(s - 16), -s))
        if size not in available:
            raise ValueError(f"no cross-attention layer works at {size}x{size}; the model has {available}")
        words = None if self.words is None else list(self.words)
        prompts = sorted(set(run.prompts))
        tokenizer, text = den.attention_tokenizer, den.attention_text  # the text as the tokenizer gets it
        words = None if words is None else [text(w) for w in words]
        tokens = {p: subject_tokens(run.pipe, text(p), words, tokenizer) for p in prompts}
        lasts = {p: len(tokenizer(text(p)).input_ids) - 1 for p in prompts}
        first = int(tokenizer.bos_token_id is not None and tokenizer("").input_ids[:1] == [tokenizer.bos_token_id])
        steps = run.steps
        lo, hi = self.scale_range
        return {
            "size": size,
            "tokens": tokens,
            "lasts": lasts,
            "first": first,
            "refine": {min(steps - 1, round(f * steps)): th for f, th in self.refine_at},
            "update_steps": round(self.update_until * steps),
            "alphas": [self.step_size * math.sqrt(lo + (hi - lo) * i / max(steps - 1, 1)) for i in range(steps)],
        }

    def prepare(self, run) -> AttentionRefinement:
        plan = self._plan(run)  # token positions and the attention grid, checked before any work
        run.settings.update(
            resolution=plan["size"],
            refine_steps=sorted(plan["refine"]),
            update_steps=plan["update_steps"],
            subject_tokens=[plan["tokens"][p] for p in run.prompts],
        )
        return self

    def hook(self, run):
        plan, den = self._plan(run), run.den
        size, refine, update_steps, alphas = plan["size"], plan["refine"], plan["update_steps"], plan["alphas"]
        grid = den.attention_grid(size)  # (height, width): non-square images have non-square maps
        rows_total = run.images * run.n  # per row: the loss at each step where it was computed, extra updates
        losses: list[dict[int, float]] = [{} for _ in range(rows_total)]
        iterations = [0] * rows_total
        skipped = [0] * rows_total  # updates refused because they would make z_t non-finite
        run.outputs.update(losses=losses, refine_iterations=iterations, skipped_refinements=skipped)

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
                    [
                        attend_and_excite_loss(
                            maps[j].float(),
                            plan["tokens"][run.prompt_of(r)],
                            plan["lasts"][run.prompt_of(r)],
                            self.smooth,
                            grid,
                            plan["first"],
                        )
                        for j, r in enumerate(rows)
                    ]
                )
                (grad,) = torch.autograd.grad(per_row.sum(), z)
            return per_row.detach(), torch.nan_to_num(grad)

        def prepare(info) -> torch.Tensor:
            i, t, z, rows, schedulers = info["step"], info["t"], info["latents"], info["rows"], info["schedulers"]
            if i >= update_steps and i not in refine:
                return z
            loss, grad = loss_and_grad(z, t, rows, schedulers)
            for j, r in enumerate(rows):
                losses[r][i] = float(loss[j])
            if i in refine:
                for _ in range(self.max_refine_iterations):
                    todo = [j for j in range(len(rows)) if float(loss[j]) > 1 - refine[i]]
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
            if i < update_steps:
                z = update(z, alphas[i], grad, rows)
            return z.detach()

        return prepare
