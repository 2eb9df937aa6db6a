"""A weighted sum of scorers on the pipeline's latents: `ScoreSum([(judge, 1.0), (pixel_clip, 50.0)])`.

Scorers that read different things err on different candidates: on the Shapes world the latent judge (a joint
reading of latent cells and prompt) and pixel CLIP (a dual encoder on the decode) rank a prompt's candidates better
together than either alone on TRAIN prompts (`benchmarks/judge_with_pixel.py`: within-prompt AUROC 0.813 against
0.750 and Best-of-8 0.785 against 0.762 at weight 50). The sum reads the pipeline's clean latents: a latent member
reads them as they are, a pixel member through its VAE (`PixelCLIPScorer.score_latents`) or the image a method
decoded once through its own pipeline (`score(..., pixels=)`: Best-of-N and noise optimisation pass theirs, and
count that decode in their cost), and a judge of noisy latents through its clean-latent reading. It is
differentiable wherever its members are, so it serves as Best-of-N's final pick (`final_scorer=`), a noise-
optimisation reward or any other `Scorer` use on final latents.
"""

from __future__ import annotations

import copy
import math
from numbers import Real

import torch
from torch import nn

from .base import Scorer, as_prompts


def _clean_reader(scorer: Scorer) -> Scorer:
    """`scorer` reading the pipeline's clean latents (or their decode); refuses one that cannot, before any work."""
    if not isinstance(scorer, Scorer):
        raise ValueError(f"ScoreSum adds Scorers, got {type(scorer).__name__}")
    if scorer.space == "pixels":
        if not hasattr(scorer, "score_latents"):
            raise ValueError(f"{type(scorer).__name__} reads pixels but cannot decode latents (no score_latents)")
        if getattr(scorer, "vae", None) is None:
            raise ValueError(f"{type(scorer).__name__} reads pixels: load it with vae= so the sum can decode latents")
        return scorer
    if scorer.space == "noisy_latents":
        if not hasattr(scorer, "reading"):
            raise ValueError(f"{type(scorer).__name__} reads noisy latents only: ScoreSum reads clean latents")
        return scorer.reading("latents")
    return scorer


class ScoreSum(Scorer):
    """sum_i w_i * scorer_i(latents, prompts), over the pipeline's clean latents."""

    space = "latents"
    kind = "sum"

    def __init__(self, terms: list[tuple[Scorer, float]]):
        super().__init__()
        terms = list(terms)
        if not terms:
            raise ValueError("ScoreSum needs at least one (scorer, weight) term")
        for _, w in terms:
            if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(float(w)):
                raise ValueError(f"ScoreSum weights must be finite numbers, got {w!r}")
        self.members = nn.ModuleList(_clean_reader(s) for s, _ in terms)
        self.weights = tuple(float(w) for _, w in terms)

    @property
    def reads_pixels(self) -> bool:
        """Whether a member reads the decoded image (a caller may pass `pixels=` to `score`, decoded once)."""
        return any(m.space == "pixels" or m.reads_pixels for m in self.members)

    @property
    def in_channels(self) -> int:
        m = self.members[0]
        return m.vae.config.latent_channels if m.space == "pixels" else m.in_channels

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def for_pipeline_latents(self, vae) -> ScoreSum:
        members = [m.for_pipeline_latents(vae) for m in self.members]
        if all(a is b for a, b in zip(members, self.members, strict=True)):
            return self
        view = copy.copy(self)
        view._modules = dict(self._modules)
        view.members = nn.ModuleList(members)
        return view

    def check_input(self, x: torch.Tensor, t: torch.Tensor | int | None = None) -> None:
        super().check_input(x, None)
        for m in self.members:
            if m.space != "pixels":
                m.check_input(x, None)
            elif x.shape[1] != m.vae.config.latent_channels:
                raise ValueError(f"{type(m).__name__}'s VAE decodes {m.vae.config.latent_channels}-channel latents")

    def score(
        self,
        x: torch.Tensor,
        prompts: str | list[str],
        t: torch.Tensor | int | None = None,
        *,
        pixels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The weighted sum of the members' scores of the clean latents `x` (t is ignored: final latents).

        `pixels`: `x` decoded by the caller (a method passes its pipeline's own decode, counted in its cost); else
        each pixel member decodes `x` through its VAE."""
        prompts = as_prompts(prompts, x.shape[0] if isinstance(x, torch.Tensor) and x.ndim else None)
        self.check_input(x)
        if pixels is not None and not (
            isinstance(pixels, torch.Tensor) and pixels.ndim == 4 and pixels.shape[0] == x.shape[0]
        ):
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(
                f"pixels must be the latents' decode, a (B, C, H, W) tensor with B = {x.shape[0]}; got {shape}"
            )
        total = None
        for m, w in zip(self.members, self.weights, strict=True):
            if isinstance(m, ScoreSum):
                s = m.score(x, prompts, pixels=pixels)
            elif m.space == "pixels":
                s = m.score_latents(x, prompts) if pixels is None else m.score(pixels, prompts)
            else:
                s = m.score(x, prompts)
            total = w * s.float() if total is None else total + w * s.float()
        return total
