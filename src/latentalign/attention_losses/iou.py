"""Attend-and-Excite plus subject overlap (the IoU loss of gsn-factory, Grimal et al.'s SAGA code).

Excitation alone lets two subjects light up the same region (one object drawn for two words); once every subject
is excited (the A&E term below `switch`), the mean pairwise soft IoU of the subject maps
(sum(min) / sum(a + b), as gsn-factory writes it) is added so the regions separate."""

from __future__ import annotations

import itertools
from typing import ClassVar

import torch

from .attend_and_excite import attend_and_excite_term
from .base import AttentionLoss, TokenMaps, register_loss


def soft_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(min(a, b)) / sum(a + b) of two non-negative maps, as gsn-factory computes it: 1/2 when equal, 0 when
    disjoint."""
    return torch.minimum(a, b).sum() / (a + b).sum().clamp_min(1e-8)


def mean_pairwise_iou(subjects: torch.Tensor) -> torch.Tensor:
    pairs = list(itertools.combinations(range(subjects.shape[0]), 2))
    if not pairs:
        return subjects.sum() * 0
    return torch.stack([soft_iou(subjects[i], subjects[j]) for i, j in pairs]).mean()


@register_loss
class IoULoss(AttentionLoss):
    """A&E's term, plus `weight` x the mean pairwise soft IoU of subject maps once the A&E term is below `switch`."""

    name: ClassVar[str] = "iou"

    def __init__(self, switch: float = 0.2, weight: float = 1.0):
        super().__init__()
        if not 0 < switch <= 1 or weight < 0:
            raise ValueError(f"switch must lie in (0, 1] and weight be >= 0, got {switch}, {weight}")
        self.switch, self.weight = switch, weight

    def forward(self, maps: TokenMaps) -> dict[str, torch.Tensor]:
        excite = attend_and_excite_term(maps.subjects)
        overlap = mean_pairwise_iou(maps.subjects)
        on = float(excite.detach() < self.switch)
        return {"loss": excite + on * self.weight * overlap, "attend_and_excite": excite, "iou": overlap}
