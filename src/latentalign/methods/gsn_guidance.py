"""GSN guidance, GSNg (gsn-factory, Grimal et al.): one gradient step on the attention loss at each chosen step.

No threshold and no inner loop: at each of `steps` z_t moves once by -alpha_i * grad of the loss. `steps` left
None is read from the pipeline's latentalign.json (key "gsn-guidance"), else it is A&E's update range, the first
half of the steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .attention_refinement import AttentionGuidance, check_step_indices
from .base import register


@register
@dataclass(frozen=True)
class GSNGuidance(AttentionGuidance):
    """GSN guidance (GSNg, gsn-factory): one update of the attention loss at each of `steps`, no threshold."""

    name: ClassVar[str] = "gsn-guidance"

    steps: tuple[int, ...] | None = None  # None: latentalign.json's, else the first half of the run's steps

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "steps", check_step_indices("steps", self.steps))

    def schedule(self, steps: int) -> tuple[dict[int, float], set[int]]:
        return {}, set(self.steps) if self.steps is not None else set(range(round(steps / 2)))
