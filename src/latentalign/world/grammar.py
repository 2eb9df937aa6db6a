"""The Shapes world's prompt grammar: parse, enumerate and corrupt compositional prompts."""

from __future__ import annotations

import colorsys
import itertools
import random
from dataclasses import dataclass, replace

IMAGE_SIZE = 32  # pixels; the tiny VAE maps this to 4 x 8 x 8 latents

# Hues 60 degrees apart, all at the same value and saturation, so a checker can classify colour by hue
# alone, independent of antialiasing and blur.
COLOUR_HUES = {"red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0, "magenta": 300.0}
COLOUR_VALUE, COLOUR_SATURATION = 0.9, 0.85
COLOURS = tuple(COLOUR_HUES)
SHAPES = ("circle", "square", "triangle", "diamond")
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
PAIR_MAX_COUNT = 3  # two-object prompts may count each kind: "two red circles and a blue square"
MAX_OBJECTS = 6  # a 32x32 canvas holds at most six objects large enough to tell their shapes apart
COUNTS = tuple(COUNT_WORDS)
PLURALS = {s + "s": s for s in SHAPES}


def colour_rgb(name: str) -> tuple[int, int, int]:
    """The exact RGB the renderer paints a colour name with."""
    r, g, b = colorsys.hsv_to_rgb(COLOUR_HUES[name] / 360.0, COLOUR_SATURATION, COLOUR_VALUE)
    return round(r * 255), round(g * 255), round(b * 255)


def vocabulary() -> dict[str, list[str]]:
    """Everything the Shapes world can say: colours, shapes, relations and count words."""
    return {
        "colours": list(COLOURS),
        "shapes": list(SHAPES),
        "relations": list(RELATIONS),
        "counts": list(COUNTS),
    }


def words() -> list[str]:
    """Every word a Shapes prompt can contain (the tokenizer makes each one a single token)."""
    ws = {"a", "and"} | set(COLOURS) | set(SHAPES) | set(PLURALS) | set(COUNTS)
    for rel in RELATIONS:
        ws |= set(rel.split())
    return sorted(ws)


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    count: int = 1

    def phrase(self, counted: bool = False) -> str:
        if not counted:
            return f"a {self.colour} {self.shape}"
        word = {v: k for k, v in COUNT_WORDS.items()}[self.count]
        return f"{word} {self.colour} {self.shape}{'s' if self.count > 1 else ''}"


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for: object groups, an optional relation (objects[0] <relation> objects[1])."""

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def prompt(self) -> str:
        if self.category == "single_object":
            return self.objects[0].phrase()
        if self.category == "counting":
            return self.objects[0].phrase(counted=True)
        if self.category == "two_objects":
            a, b = self.objects
            return f"{a.phrase(counted=a.count > 1)} and {b.phrase(counted=b.count > 1)}"
        return f"{self.objects[0].phrase()} {self.relation} {self.objects[1].phrase()}"


class PromptError(ValueError):
    """A prompt the Shapes world cannot express."""


def _object_at(tokens: list[str], i: int, prompt: str) -> tuple[ObjectSpec, int]:
    """Parse `a <colour> <shape>` or `<count> <colour> <shape(s)>` starting at token i."""
    if i + 3 > len(tokens):
        raise PromptError(f"incomplete object phrase in {prompt!r}; expected e.g. 'a red circle'")
    det, colour, noun = tokens[i : i + 3]
    if det != "a" and det not in COUNT_WORDS:
        raise PromptError(f"expected 'a' or a count word ({', '.join(COUNTS)}), got {det!r} in {prompt!r}")
    if colour not in COLOUR_HUES:
        raise PromptError(f"unknown colour {colour!r} in {prompt!r}; the Shapes world knows {', '.join(COLOURS)}")
    if noun not in SHAPES and noun not in PLURALS:
        raise PromptError(f"unknown shape {noun!r} in {prompt!r}; the Shapes world knows {', '.join(SHAPES)}")
    count = 1 if det == "a" else COUNT_WORDS[det]
    shape = PLURALS.get(noun, noun)
    if (count > 1) != (noun in PLURALS):
        raise PromptError(f"number disagreement in {prompt!r}: {det!r} with {noun!r}")
    return ObjectSpec(colour, shape, count), i + 3


def parse(prompt: str) -> Scene:
    """Parse a Shapes prompt into a `Scene`; raise `PromptError` naming the first word it cannot use."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("empty prompt")
    tokens = prompt.lower().replace(",", " ").split()
    known = set(words())
    for tok in tokens:
        if tok not in known:
            raise PromptError(f"unknown word {tok!r} in {prompt!r}; see latentalign.world.vocabulary()")
    first, i = _object_at(tokens, 0, prompt)
    if i == len(tokens):
        counted = tokens[0] in COUNT_WORDS
        return Scene("counting" if counted else "single_object", (first,))
    rest = " ".join(tokens[i:])
    if tokens[i] == "and":
        kind, relation, j = "two_objects", None, i + 1
    else:
        relation = next((r for r in RELATIONS if rest.startswith(r + " ")), None)
        if relation is None:
            raise PromptError(f"expected 'and' or a relation ({', '.join(RELATIONS)}) in {prompt!r}")
        kind, j = "relation", i + len(relation.split())
        if tokens[0] != "a" or (j < len(tokens) and tokens[j] != "a"):
            raise PromptError(f"relations hold between single objects ('a red circle left of a square'), in {prompt!r}")
    second, end = _object_at(tokens, j, prompt)
    if end != len(tokens):
        raise PromptError(f"unexpected words after the second object in {prompt!r}")
    if kind == "two_objects" and max(first.count, second.count) > PAIR_MAX_COUNT:
        raise PromptError(f"two-object prompts count each kind up to {PAIR_MAX_COUNT}, in {prompt!r}")
    if first.count + second.count > MAX_OBJECTS:
        raise PromptError(f"a scene holds at most {MAX_OBJECTS} objects, {prompt!r} asks for more")
    if (first.colour, first.shape) == (second.colour, second.shape):
        raise PromptError(f"both objects are the same kind in {prompt!r}; use a count ('two red circles')")
    return Scene(kind, (first, second), relation)


def all_scenes(category: str) -> list[Scene]:
    """Every scene of a category, in a fixed order."""
    kinds = [ObjectSpec(c, s) for c, s in itertools.product(COLOURS, SHAPES)]
    if category == "single_object":
        return [Scene(category, (k,)) for k in kinds]
    if category == "counting":  # two and more, as GenEval counts: one object is the single-object category's job
        return [Scene(category, (replace(k, count=n),)) for k in kinds for n in COUNT_WORDS.values() if n > 1]
    pairs = [(a, b) for a, b in itertools.product(kinds, kinds) if a != b]
    if category == "two_objects":
        counts = range(1, PAIR_MAX_COUNT + 1)
        return [
            Scene(category, (replace(a, count=m), replace(b, count=n)))
            for a, b in pairs
            for m in counts
            for n in counts
            if m + n <= MAX_OBJECTS
        ]
    if category == "relation":
        return [Scene(category, p, r) for p in pairs for r in RELATIONS]
    raise ValueError(f"unknown category {category!r}")


INVERSE_RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def inverse_phrasing(prompt: str) -> str:
    """The same relation scene described from the other object: 'a X left of a Y' -> 'a Y right of a X'."""
    scene = parse(prompt)
    if scene.relation is None:
        raise ValueError(f"{prompt!r} states no relation")
    a, b = scene.objects
    return Scene(scene.category, (b, a), INVERSE_RELATIONS[scene.relation]).prompt()


def corrupt(prompt: str, rng: random.Random, field: str | None = None) -> str:
    """Change exactly one colour, shape, relation or count of a prompt (a hard negative)."""
    scene = parse(prompt)
    fields = (
        ["colour", "shape"]
        + (["relation"] if scene.relation else [])
        + (["count"] if scene.category in ("counting", "two_objects") else [])
    )
    if field is None:
        field = rng.choice(fields)
    elif field not in fields:
        raise ValueError(f"cannot corrupt {field!r} of {prompt!r}; choose from {fields}")
    objs = list(scene.objects)
    for _ in range(100):
        k = rng.randrange(len(objs))
        if field == "relation":
            new = Scene(scene.category, scene.objects, rng.choice([r for r in RELATIONS if r != scene.relation]))
        else:
            o = objs[k]
            if field == "colour":
                o = replace(o, colour=rng.choice([c for c in COLOURS if c != o.colour]))
            elif field == "shape":
                o = replace(o, shape=rng.choice([s for s in SHAPES if s != o.shape]))
            else:
                top = PAIR_MAX_COUNT if scene.category == "two_objects" else max(COUNT_WORDS.values())
                o = replace(o, count=rng.choice([n for n in range(1, top + 1) if n != o.count]))
            new = Scene(scene.category, tuple(objs[:k] + [o] + objs[k + 1 :]), scene.relation)
        if sum(o.count for o in new.objects) > MAX_OBJECTS:
            continue
        if len(new.objects) < 2 or (new.objects[0].colour, new.objects[0].shape) != (
            new.objects[1].colour,
            new.objects[1].shape,
        ):
            return new.prompt()
    raise RuntimeError(f"could not corrupt {prompt!r}")
