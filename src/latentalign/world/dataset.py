"""Datasets of rendered Shapes scenes: prompts drawn per category, images rendered from seeds."""

from __future__ import annotations

import random

import numpy as np
from tqdm.auto import tqdm

from .grammar import Scene, parse
from .render import Placed, render_scene, to_array
from .suites import SUITE_NAMES, suite

PAIR_ORDERS = ("prompt", "left-to-right")


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
    pair_order: str = "prompt",
) -> tuple[np.ndarray, list[str]]:
    """Render n (image, prompt) pairs; returns uint8 images of shape (n, 32, 32, 3) and their prompts.

    `pair_order="left-to-right"` captions a two-object scene by its layout: the group whose objects lie further left
    (by their mean centre) is named first, when that phrasing is a prompt of `split` (both phrasings describe the
    scene; the images are the same either way). Where both phrasings are in the split (on Shapes' train split, 2 812
    of 3 726 two-object prompts), "A and B" then carries where each group is, as a relation does; the others keep
    the prompt's order whatever the layout.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if pair_order not in PAIR_ORDERS:
        raise ValueError(f"pair_order must be one of {PAIR_ORDERS}, got {pair_order!r}")
    rng = random.Random(seed)
    prompts = sample_prompts(n, rng, split=split, categories=categories, weights=weights)
    allowed = set(suite("two_objects", split)) if pair_order == "left-to-right" else set()
    images, captions = [], []
    for p in tqdm(prompts, desc="render", disable=not progress):
        scene = parse(p)
        image, placed = render_scene(scene, rng.randrange(2**31))
        images.append(to_array(image))
        captions.append(left_to_right(scene, placed, allowed) if allowed and scene.category == "two_objects" else p)
    return np.stack(images), captions


def left_to_right(scene: Scene, placed: list[Placed], allowed: set[str]) -> str:
    """A two-object scene's prompt naming its left group first (its own prompt when the swap is not in `allowed`)."""
    first, second = scene.objects
    a, b = placed[: first.count], placed[first.count :]  # layout places the groups in the prompt's order
    mean_x = lambda group: sum(q.centre[0] for q in group) / len(group)  # noqa: E731
    if mean_x(b) < mean_x(a):
        swapped = Scene(scene.category, (second, first)).prompt()
        if swapped in allowed:
            return swapped
    return scene.prompt()
