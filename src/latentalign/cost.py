"""What a method spent: every method returns one, so comparisons at equal compute are one line."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

BACKWARD_TO_FORWARD = 2  # a backward pass through the denoiser costs about two forward passes


def forward_equivalents(evals: float, backwards: float) -> float:
    """Forward evaluations plus `BACKWARD_TO_FORWARD` per backward pass."""
    return evals + BACKWARD_TO_FORWARD * backwards


@dataclass
class Cost:
    """Compute spent. Counts are per image: a batch of 4 with classifier-free guidance costs 8 evaluations a step."""

    denoiser_evals: int = 0  # UNet/transformer forward passes, per latent
    # of those, the evaluations a method differentiated through (ReNO's sampling, attention refinement's maps):
    # each also costs a backward pass, about two forward passes of work
    denoiser_backwards: int = 0
    vae_decodes: int = 0  # latents decoded to pixels
    vae_encodes: int = 0
    scorer_calls: int = 0  # images or latents scored
    projector_calls: int = 0  # noise projector forward passes, per latent
    seconds: float = 0.0  # wall-clock time

    def __add__(self, other: Cost) -> Cost:
        return Cost(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def denoiser_equivalents(self) -> int:
        """Denoiser work in forward-evaluation units: each backward pass counted as two forward passes (the usual
        FLOP ratio), so gradient methods and sampling methods sit on one compute axis."""
        return forward_equivalents(self.denoiser_evals, self.denoiser_backwards)

    def to_dict(self) -> dict:
        """The counts and seconds, and `denoiser_equivalents` (derived; what frontiers plot)."""
        out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["denoiser_equivalents"] = self.denoiser_equivalents
        return out

    @contextmanager
    def timed(self):
        """Add the wall time of a block to `seconds`."""
        start = time.perf_counter()
        try:
            yield self
        finally:
            self.seconds += time.perf_counter() - start
