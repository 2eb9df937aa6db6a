"""Named prompt suites per category, like GenEval's, with a fixed held-out split."""

from __future__ import annotations

import hashlib
import math

from .grammar import all_scenes, parse

SUITE_NAMES = ("single_object", "two_objects", "relation", "counting")
HELDOUT_FRACTION = 0.25


def _key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()


def suite(name: str, split: str = "train") -> list[str]:
    """The prompts of a suite. `heldout` prompts are never seen by the training of any scorer or projector.

    The split is the first quarter of the suite ordered by the SHA-256 of each prompt: fixed, and
    independent of how the grammar enumerates.
    """
    if name not in SUITE_NAMES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITE_NAMES)}")
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"unknown split {split!r}; choose 'train', 'heldout' or 'all'")
    prompts = [s.prompt() for s in all_scenes(name)]
    if split == "all":
        return prompts
    n_heldout = math.ceil(HELDOUT_FRACTION * len(prompts))
    heldout = set(sorted(prompts, key=_key)[:n_heldout])
    return [p for p in prompts if (p in heldout) == (split == "heldout")]


def category_of(prompt: str) -> str:
    """The suite a prompt belongs to."""
    return parse(prompt).category
