"""IterRef at chosen steps (Grimal, Le Borgne, Ferret: step selection for generative semantic nursing).

At each of `steps` (indices into the run's schedule) z_t is refined against the attention loss until the loss
reaches the threshold's target or `max_refine_iterations` updates; no other step is touched. The paper's claim is
that one such step, well chosen, beats Attend-and-Excite's schedule; `latentalign select-steps` chooses it on train
prompts and records it in the pipeline's latentalign.json (key "iterref"), where `steps` left None is read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .attention_refinement import AttentionGuidance, check_step_indices
from .base import register


@register
@dataclass(frozen=True)
class IterRef(AttentionGuidance):
    """IterRef (Grimal et al.): refinement at `steps` only, each until the loss reaches `threshold`'s target."""

    name: ClassVar[str] = "iterref"

    steps: tuple[int, ...] | None = None  # None: the pipeline's latentalign.json (chosen by select-steps)
    threshold: float = 0.8  # the A&E loss is refined down to 1 - threshold (A&E's last refine step's value)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "steps", check_step_indices("steps", self.steps))
        if isinstance(self.threshold, bool) or not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold!r}")

    def schedule(self, steps: int) -> tuple[dict[int, float], set[int]]:
        if self.steps is None:
            raise ValueError(
                "iterref needs steps=[...] (step indices), or a pipeline whose latentalign.json records them "
                "(`latentalign select-steps --record`)"
            )
        return dict.fromkeys(self.steps, self.threshold), set()
