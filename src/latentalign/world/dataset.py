"""Datasets of rendered Shapes scenes: prompts drawn per category, images rendered from seeds."""

from __future__ import annotations

import random

import numpy as np
from tqdm.auto import tqdm

from .render import render, to_array
from .suites import SUITE_NAMES, suite


def sample_prompts(
    n: int, rng: random.Random, *, split: str = "all", categories=SUITE_NAMES, weights: list[float] | None = None
) -> list[str]:
    """n prompts: a category at random (uniform unless weighted), then a prompt of that category uniformly."""
    pools = {c: suite(c, split) for c in categories}
    return [rng.choice(pools[rng.choices(list(categories), weights)[0]]) for _ in range(n)]


def build_dataset(
    n: int,
    *,
    seed: int = 0,
    split: str = "all",
    categories=SUITE_NAMES,
    weights: list[float] | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Render n (image, prompt) pairs; returns uint8 images of shape (n, 32, 32, 3) and their prompts."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    prompts = sample_prompts(n, rng, split=split, categories=categories, weights=weights)
    images = np.stack(
        [to_array(render(p, rng.randrange(2**31))) for p in tqdm(prompts, desc="render", disable=not progress)]
    )
    return images, prompts
