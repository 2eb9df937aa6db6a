"""SynGen (Rassin et al., 2023): a modifier's map should match its noun's and differ from every other word's.

Maps are normalised to distributions over the pixels and compared by symmetric KL divergence. The attraction term
is its mean over modifier-noun pairs; the repulsion term, subtracted, the mean over pairs of the divergence of the
pair's two maps from every subject or modifier outside the pair ("red" and "circle" from "blue" and "square" in
"a red circle and a blue square")."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import AttentionLoss, TokenMaps, register_loss


def symmetric_kl(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(p || q) + KL(q || p) of two non-negative maps, each normalised to sum to one."""
    p = a.flatten() / a.sum().clamp_min(eps) + eps
    q = b.flatten() / b.sum().clamp_min(eps) + eps
    return (p * (p / q).log()).sum() + (q * (q / p).log()).sum()


@register_loss
class SynGen(AttentionLoss):
    """Attraction between each modifier and its noun, minus `repulsion` x their divergence from unrelated words."""

    name: ClassVar[str] = "syngen"
    reads_modifiers: ClassVar[bool] = True

    def __init__(self, repulsion: float = 1.0):
        super().__init__()
        if repulsion < 0:
            raise ValueError(f"repulsion must be >= 0, got {repulsion}")
        self.repulsion = repulsion

    def forward(self, maps: TokenMaps) -> dict[str, torch.Tensor]:
        if maps.modifiers.shape[0] == 0:
            raise ValueError("SynGen needs attribute-noun pairs (attributes=[('red', 'ball')], or a Shapes prompt)")
        subjects, modifiers = maps.subjects, maps.modifiers
        attract, repel = [], []
        for m, n in enumerate(maps.modifies):
            attract.append(symmetric_kl(modifiers[m], subjects[n]))
            others = [subjects[j] for j in range(subjects.shape[0]) if j != n]
            others += [modifiers[j] for j in range(modifiers.shape[0]) if j != m and maps.modifies[j] != n]
            if others:
                repel.append(
                    torch.stack(
                        [(symmetric_kl(modifiers[m], o) + symmetric_kl(subjects[n], o)) / 2 for o in others]
                    ).mean()
                )
        attraction = torch.stack(attract).mean()
        repulsion = torch.stack(repel).mean() if repel else attraction * 0
        return {"loss": attraction - self.repulsion * repulsion, "attraction": attraction, "repulsion": repulsion}

    def threshold_target(self, threshold: float) -> float:
        """Its loss has no fixed range: IterRef refines until the attraction-minus-repulsion falls to -threshold."""
        return -threshold
