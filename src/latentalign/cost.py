"""What a method spent: every method returns one, so comparisons at equal compute are one line."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields


@dataclass
class Cost:
    """Compute spent. Counts are per image: a batch of 4 with classifier-free guidance costs 8 evaluations a step."""

    denoiser_evals: int = 0  # UNet/transformer forward passes, per latent
    vae_decodes: int = 0  # latents decoded to pixels
    vae_encodes: int = 0
    scorer_calls: int = 0  # images or latents scored
    projector_calls: int = 0  # noise projector forward passes, per latent
    seconds: float = 0.0  # wall-clock time

    def __add__(self, other: Cost) -> Cost:
        return Cost(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @contextmanager
    def timed(self):
        """Add the wall time of a block to `seconds`."""
        start = time.perf_counter()
        try:
            yield self
        finally:
            self.seconds += time.perf_counter() - start
