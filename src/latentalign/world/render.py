"""Procedural renderer: a prompt and a seed give one antialiased 32x32 scene with exact ground truth."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .grammar import IMAGE_SIZE, Scene, colour_rgb, parse

SUPERSAMPLE = 8  # draw at 8x, then box-filter down: edges get exact coverage antialiasing
SIZE_RANGE = (9.0, 13.0)  # object side or diameter in pixels (smaller when three or more objects share the scene)
GAP = 2.0  # minimum free pixels between object boxes, so objects never touch
MARGIN = 1.0  # minimum distance from the border
RELATION_MARGIN = 3.0  # the relation's axis dominates the other by at least this many pixels


@dataclass(frozen=True)
class Placed:
    colour: str
    shape: str
    x: float  # box left
    y: float  # box top
    size: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.size / 2, self.y + self.size / 2


def _relation_holds(a: Placed, b: Placed, relation: str, margin: float) -> bool:
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = bx - ax, by - ay  # b relative to a, image y grows downwards
    if relation == "left of":
        return dx >= abs(dy) + margin
    if relation == "right of":
        return -dx >= abs(dy) + margin
    if relation == "above":
        return dy >= abs(dx) + margin
    if relation == "below":
        return -dy >= abs(dx) + margin
    raise ValueError(relation)


def _apart(p: Placed, q: Placed) -> bool:
    """At least GAP free pixels between the two boxes, on one axis or the other."""
    return (
        p.x + p.size + GAP <= q.x or q.x + q.size + GAP <= p.x or p.y + p.size + GAP <= q.y or q.y + q.size + GAP <= p.y
    )


POSITION_STEP = 0.25  # placement grid in pixels: fine enough to look continuous, coarse enough to enumerate


def _free_position(size: float, placed: list[Placed], rng: random.Random) -> tuple[float, float] | None:
    """A position drawn uniformly among those that keep GAP pixels from every placed box (None if there is none)."""
    axis = np.arange(MARGIN, IMAGE_SIZE - MARGIN - size + 1e-9, POSITION_STEP)
    free = np.ones((len(axis), len(axis)), dtype=bool)  # [row (y), column (x)]
    for q in placed:  # apart on x or apart on y: each test depends on one coordinate only
        apart_x = (axis + size + GAP <= q.x) | (q.x + q.size + GAP <= axis)
        apart_y = (axis + size + GAP <= q.y) | (q.y + q.size + GAP <= axis)
        free &= apart_x[None, :] | apart_y[:, None]
    idx = np.flatnonzero(free)
    if len(idx) == 0:
        return None
    k = idx[min(int(rng.random() * len(idx)), len(idx) - 1)]
    return float(axis[k % len(axis)]), float(axis[k // len(axis)])


def layout(scene: Scene, rng: random.Random, max_tries: int = 2000) -> list[Placed]:
    """Random sizes and non-touching positions satisfying the scene's relation."""
    kinds = [(o.colour, o.shape) for o in scene.objects for _ in range(o.count)]
    lo, hi = SIZE_RANGE
    if len(kinds) == 3:
        hi = lo + 2.0  # three objects need room
    elif len(kinds) in (4, 5):
        lo, hi = lo - 1.0, lo + 1.0
    elif len(kinds) >= 6:
        lo, hi = lo - 2.0, lo - 0.5
    for _ in range(max_tries):
        placed: list[Placed] = []
        for colour, shape in kinds:
            s = rng.uniform(lo, hi)
            pos = _free_position(s, placed, rng)
            if pos is None:
                break  # no room left for this object: start the scene over
            placed.append(Placed(colour, shape, pos[0], pos[1], s))
        if len(placed) != len(kinds):
            continue
        if scene.relation and not _relation_holds(placed[0], placed[1], scene.relation, RELATION_MARGIN):
            continue
        return placed
    raise RuntimeError(f"no layout found for {scene.prompt()!r}")


def draw(placed: list[Placed]) -> Image.Image:
    """Paint placed objects on black, supersampled then box-filtered."""
    k = SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * k, IMAGE_SIZE * k), (0, 0, 0))
    d = ImageDraw.Draw(big)
    for p in placed:
        x0, y0, x1, y1 = p.x * k, p.y * k, (p.x + p.size) * k - 1, (p.y + p.size) * k - 1
        fill = colour_rgb(p.colour)
        if p.shape == "circle":
            d.ellipse((x0, y0, x1, y1), fill=fill)
        elif p.shape == "square":
            d.rectangle((x0, y0, x1, y1), fill=fill)
        elif p.shape == "triangle":  # pointing up
            d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:  # diamond: a square standing on a corner, filling its box's inscribed rhombus
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def render_scene(scene: Scene, seed: int) -> tuple[Image.Image, list[Placed]]:
    placed = layout(scene, random.Random(seed))
    return draw(placed), placed


def render(prompt: str, seed: int = 0) -> Image.Image:
    """Render one valid 32x32 image of a Shapes prompt; the seed (an integer >= 0) picks sizes and placement."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"render takes a seed that is an integer >= 0, got {seed!r}")
    return render_scene(parse(prompt), seed)[0]


def to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
