"""The interface every attention loss shares: token maps in, a dict of named terms out (open_clip's losses)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

_LOSSES: dict[str, type[AttentionLoss]] = {}


@dataclass(frozen=True)
class TokenGroups:
    """The text positions one prompt's losses read, as the attention tokenizer numbers them.

    `subjects`: one group per occurrence of a subject word, each the positions of its sub-tokens (a word the
    tokenizer splits is one group; a word said twice is two); `modifiers`: one group per attribute word, and
    `modifies[i]` the index in `subjects` of the noun modifier i binds to; `words` names the subjects and
    `modifier_words` the modifiers, for results and errors."""

    subjects: tuple[tuple[int, ...], ...]
    words: tuple[str, ...]
    modifiers: tuple[tuple[int, ...], ...] = ()
    modifier_words: tuple[str, ...] = ()
    modifies: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.subjects or any(not g for g in self.subjects):
            raise ValueError("token groups need at least one subject, each with at least one token")
        if len(self.words) != len(self.subjects):
            raise ValueError(f"{len(self.words)} subject words for {len(self.subjects)} token groups")
        if not len(self.modifiers) == len(self.modifier_words) == len(self.modifies):
            raise ValueError("modifiers, modifier_words and modifies must have one entry per modifier")
        if any(not 0 <= i < len(self.subjects) for i in self.modifies):
            raise ValueError(f"modifies indexes subjects 0..{len(self.subjects) - 1}, got {self.modifies}")

    @property
    def positions(self) -> list[int]:
        """Every subject position, sorted."""
        return sorted({p for g in self.subjects for p in g})

    def describe(self) -> dict:
        """The chosen tokens, as results record them."""
        return {
            "subjects": [{"word": w, "tokens": list(g)} for w, g in zip(self.words, self.subjects, strict=True)],
            "modifiers": [
                {"word": w, "tokens": list(g), "modifies": self.words[i]}
                for w, g, i in zip(self.modifier_words, self.modifiers, self.modifies, strict=True)
            ],
        }


@dataclass(frozen=True)
class TokenMaps:
    """One prompt's attention maps per group, (groups, height, width): each pixel's share of the text attention
    (a softmax over the prompt's word tokens, A&E's x100 sharpening, optionally smoothed)."""

    subjects: torch.Tensor
    modifiers: torch.Tensor  # (0, h, w) when the prompt has no modifier
    modifies: tuple[int, ...] = ()


def gaussian_smooth(maps: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """3x3 Gaussian smoothing of (n, h, w) maps with reflected borders, as Attend-and-Excite smooths them."""
    x = torch.arange(3, dtype=maps.dtype, device=maps.device) - 1
    k = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (k[:, None] * k[None, :]) / (k.sum() ** 2)
    if min(maps.shape[-2:]) < 2:  # a reflected border needs two pixels a side
        return maps
    padded = F.pad(maps[:, None], (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel[None, None])[:, 0]


def token_maps(
    attention: torch.Tensor,
    groups: TokenGroups,
    first: int,
    last: int,
    grid: tuple[int, int] | None = None,
    smooth: bool = True,
) -> TokenMaps:
    """(pixels, text tokens) image-to-text attention of one prompt -> its groups' maps: tokens `first` to `last` - 1
    (the words: CLIP's start token and everything from the end token on are dropped) compete in a softmax of 100
    times the attention (A&E's), each group is the mean of its sub-tokens' maps."""
    side = int(math.isqrt(attention.shape[0]))
    height, width = grid if grid is not None else (side, side)
    text = (attention[:, first:last] * 100).softmax(-1)

    def of(gs: tuple[tuple[int, ...], ...]) -> torch.Tensor:
        if not gs:
            return text.new_zeros(0, height, width)
        maps = torch.stack([text[:, [p - first for p in g]].mean(-1) for g in gs]).reshape(len(gs), height, width)
        return gaussian_smooth(maps) if smooth else maps

    return TokenMaps(of(groups.subjects), of(groups.modifiers), groups.modifies)


class AttentionLoss(nn.Module):
    """A loss on one prompt's token maps: `forward(maps) -> {"loss": total, <term>: ...}`, every term a scalar.

    `threshold_target(th)` is the loss IterRef refines down to at a step whose threshold is `th` (Attend-and-
    Excite's convention: its loss 1 - max attention should fall to 1 - th)."""

    name: ClassVar[str] = ""
    reads_modifiers: ClassVar[bool] = False  # it needs attribute-noun pairs (SynGen)

    def forward(self, maps: TokenMaps) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def threshold_target(self, threshold: float) -> float:
        return 1.0 - threshold


def register_loss(cls: type[AttentionLoss]) -> type[AttentionLoss]:
    """Class decorator: make a loss available by `name` to the refinement methods, the CLI and select-steps."""
    if not cls.name or cls.name in _LOSSES:
        raise ValueError(f"attention loss name {cls.name!r} is empty or taken")
    _LOSSES[cls.name] = cls
    return cls


def loss_names() -> tuple[str, ...]:
    from . import attend_and_excite, iou, syngen  # noqa: F401  (they register on import)

    return tuple(_LOSSES)


def attention_loss(loss: str | AttentionLoss) -> AttentionLoss:
    """A loss object from a registered name ("attend-and-excite", "iou", "syngen") or the object itself."""
    if isinstance(loss, AttentionLoss):
        return loss
    names = loss_names()
    if not isinstance(loss, str) or loss not in _LOSSES:
        raise ValueError(f"unknown attention loss {loss!r}: choose from {', '.join(names)}")
    return _LOSSES[loss]()
