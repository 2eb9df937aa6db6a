"""Attend-and-Excite (Chefer et al., 2023): every subject token should hold a strong region somewhere."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import AttentionLoss, TokenMaps, register_loss


def attend_and_excite_term(subjects: torch.Tensor) -> torch.Tensor:
    """max over subject maps (n, h, w) of 1 - their highest pixel: the most neglected subject's deficit."""
    return (1 - subjects.flatten(1).max(-1).values).max()


@register_loss
class AttendAndExcite(AttentionLoss):
    """A&E's loss: max over subjects of (1 - max over pixels of the subject's map)."""

    name: ClassVar[str] = "attend-and-excite"

    def forward(self, maps: TokenMaps) -> dict[str, torch.Tensor]:
        term = attend_and_excite_term(maps.subjects)
        return {"loss": term, "attend_and_excite": term}
