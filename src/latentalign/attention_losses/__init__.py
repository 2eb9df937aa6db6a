"""Losses on cross-attention maps for generative semantic nursing (GSN), one paper per module, one interface:
`TokenMaps` (one prompt's subject and modifier maps) -> dict of named terms with the total under "loss"."""

from __future__ import annotations

from .attend_and_excite import AttendAndExcite, attend_and_excite_term
from .base import (
    AttentionLoss,
    TokenGroups,
    TokenMaps,
    attention_loss,
    gaussian_smooth,
    loss_names,
    register_loss,
    token_maps,
)
from .iou import IoULoss, mean_pairwise_iou, soft_iou
from .syngen import SynGen, symmetric_kl
from .tokens import token_groups, word_spans

__all__ = [
    "AttendAndExcite",
    "AttentionLoss",
    "IoULoss",
    "SynGen",
    "TokenGroups",
    "TokenMaps",
    "attend_and_excite_term",
    "attention_loss",
    "gaussian_smooth",
    "loss_names",
    "mean_pairwise_iou",
    "register_loss",
    "soft_iou",
    "symmetric_kl",
    "token_groups",
    "token_maps",
    "word_spans",
]
