"""The Shapes world: grammar, suites, renderer, checker and dataset."""

from __future__ import annotations

import random
from dataclasses import astuple

import numpy as np
import pytest
from PIL import ImageFilter

from latentalign.world import (
    IMAGE_SIZE,
    SUITE_NAMES,
    PromptError,
    category_of,
    check,
    corrupt,
    inverse_phrasing,
    parse,
    render,
    suite,
    vocabulary,
    words,
)
from latentalign.world.checker import MISSING, WRONG_COLOUR, WRONG_COUNT, WRONG_RELATION, WRONG_SHAPE
from latentalign.world.dataset import build_dataset, sample_prompts
from latentalign.world.render import render_scene, to_array

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def sample_pairs(n: int, seed: int) -> list[tuple[str, int]]:
    """n (prompt, render seed) pairs, a suite uniformly at random, then a prompt of that suite."""
    rng = random.Random(seed)
    pools = {name: suite(name, "all") for name in SUITE_NAMES}
    return [(rng.choice(pools[rng.choice(SUITE_NAMES)]), rng.randrange(2**31)) for _ in range(n)]


def fields(prompt: str) -> tuple:
    """Every field a corruption may change, flattened: (colour, shape, count) per object, then the relation."""
    scene = parse(prompt)
    return tuple(v for o in scene.objects for v in astuple(o)) + (scene.relation,)


# Grammar


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_parse_round_trips_every_prompt(name):
    for prompt in suite(name, "all"):
        scene = parse(prompt)
        assert scene.prompt() == prompt
        assert scene.category == name


def test_parse_normalises_case_and_commas():
    assert parse("A Red Circle, left of a Blue Square").prompt() == "a red circle left of a blue square"


def test_vocabulary():
    vocab = vocabulary()
    assert set(vocab) == {"colours", "shapes", "relations", "counts"}
    assert len(vocab["colours"]) >= 4 and len(set(vocab["colours"])) == len(vocab["colours"])
    assert len(vocab["shapes"]) >= 3 and len(set(vocab["shapes"])) == len(vocab["shapes"])
    assert sorted(vocab["relations"]) == sorted(["left of", "right of", "above", "below"])
    assert vocab["counts"][:3] == ["one", "two", "three"]  # one to three of a kind at least
    ws = set(words())
    for group in vocab.values():
        for phrase in group:
            assert set(phrase.split()) <= ws


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "   ",
        "a purple circle",
        "a red hexagon",
        "two red circle",
        "a red circles",
        "a red circle and a red circle",
        "a blue square left of a blue square",
        "a red circle and",
        "a red circle near a blue square",
        "two red circles left of a blue square",
        "a red circle above three blue squares",
        "four red circles and a blue square",
        "three red circles and four blue squares",
        "seven red circles",
        "a red circle and a blue square and a green triangle",
    ],
)
def test_parse_rejects(prompt):
    with pytest.raises(PromptError):
        parse(prompt)


def test_two_object_prompts_count_each_kind():
    scene = parse("two red circles and a blue square")
    assert scene.category == "two_objects"
    assert [(o.colour, o.shape, o.count) for o in scene.objects] == [("red", "circle", 2), ("blue", "square", 1)]
    assert "three red circles and two blue squares" in suite("two_objects", "all")
    assert "three red circles and three blue squares" in suite("two_objects", "all")
    assert all(sum(o.count for o in parse(p).objects) <= 6 for p in suite("two_objects", "all"))
    assert {parse(p).objects[0].count for p in suite("counting", "all")} == {2, 3, 4, 5, 6}  # two and more


def test_prompt_error_is_a_value_error():
    assert issubclass(PromptError, ValueError)


def test_corrupt_changes_exactly_one_field():
    rng = random.Random(0)
    for prompt, _ in sample_pairs(400, seed=1):
        bad = corrupt(prompt, rng)
        assert bad != prompt
        assert parse(bad).category == parse(prompt).category
        before, after = fields(prompt), fields(bad)
        assert sum(a != b for a, b in zip(before, after, strict=True)) == 1, (prompt, bad)


def test_corrupt_named_field():
    rng = random.Random(0)
    prompt = "a red circle left of a blue square"
    assert parse(corrupt(prompt, rng, "relation")).relation != "left of"
    with pytest.raises(ValueError):
        corrupt(prompt, rng, "count")


# Suites


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_suite_splits(name):
    train, heldout, everything = suite(name, "train"), suite(name, "heldout"), suite(name, "all")
    assert heldout
    assert train
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(everything)
    assert len(everything) == len(set(everything))
    assert suite(name, "heldout") == heldout and suite(name, "train") == train
    assert all(category_of(p) == name for p in everything)


def test_suite_rejects_unknown_names():
    with pytest.raises(ValueError):
        suite("colours")
    with pytest.raises(ValueError):
        suite("counting", "test")


# Renderer


@pytest.mark.parametrize("prompt", ["a red circle", "three green triangles", "a blue square above a yellow circle"])
def test_render_is_deterministic_per_seed(prompt):
    a = to_array(render(prompt, 7))
    assert a.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, to_array(render(prompt, 7)))
    assert not np.array_equal(a, to_array(render(prompt, 8)))
    layouts = {tuple(render_scene(parse(prompt), seed)[1]) for seed in range(5)}
    assert len(layouts) == 5  # placement and size vary with the seed


# Checker


def test_checker_accepts_clean_renders():
    pairs = sample_pairs(300, seed=0)
    rejected = [(p, s) for p, s in pairs if not check(render(p, s), p).ok]
    assert len(rejected) <= 0.01 * len(pairs), rejected


def test_checker_rejects_corrupted_prompts():
    pairs = sample_pairs(300, seed=1)
    rng = random.Random(2)
    accepted = [(p, s) for p, s in pairs if check(render(p, s), corrupt(p, rng)).ok]
    assert len(accepted) <= 0.01 * len(pairs), accepted


def failure_kinds(image, prompt: str) -> set[str]:
    verdict = check(image, prompt)
    assert not verdict.ok
    return {f.kind for f in verdict.failures}


@pytest.mark.parametrize("seed", range(3))
def test_failure_kinds_of_one_object(seed):
    image = render("a red circle", seed)
    assert check(image, "a red circle").ok
    assert WRONG_COLOUR in failure_kinds(image, "a blue circle")
    assert WRONG_SHAPE in failure_kinds(image, "a red square")
    assert WRONG_COUNT in failure_kinds(image, "two red circles")


def test_blank_image_is_missing_everything():
    blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    assert failure_kinds(blank, "a red circle") == {MISSING}
    verdict = check(blank, "a red circle and a blue square")
    assert [f.kind for f in verdict.failures] == [MISSING, MISSING]


@pytest.mark.parametrize("relation", list(OPPOSITE))
def test_failure_kind_of_a_relation(relation):
    prompt = f"a red circle {relation} a blue square"
    for seed in range(2):
        image = render(prompt, seed)
        assert check(image, prompt).ok
        assert failure_kinds(image, f"a red circle {OPPOSITE[relation]} a blue square") == {WRONG_RELATION}


def test_checker_takes_arrays_and_images_alike():
    image = render("two yellow squares", 3)
    assert check(to_array(image), "two yellow squares").ok
    assert check(to_array(image).astype(np.float32) / 255.0, "two yellow squares").ok


# Dataset


def test_build_dataset():
    images, prompts = build_dataset(6, seed=3, progress=False)
    assert images.shape == (6, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8
    assert len(prompts) == 6
    assert all(check(im, p).ok for im, p in zip(images, prompts, strict=True))
    again, again_prompts = build_dataset(6, seed=3, progress=False)
    assert np.array_equal(images, again) and prompts == again_prompts
    other, _ = build_dataset(6, seed=4, progress=False)
    assert not np.array_equal(images, other)


def test_left_to_right_captions_keep_the_images_and_name_the_left_group_first():
    from latentalign.world.checker import detect

    kw = dict(seed=5, split="train", categories=("two_objects",), progress=False)
    images, prompts = build_dataset(40, **kw)
    ordered_images, ordered = build_dataset(40, pair_order="left-to-right", **kw)
    assert np.array_equal(images, ordered_images)  # only the captions change
    train = set(suite("two_objects", "train"))
    assert set(ordered) <= train
    assert any(a != b for a, b in zip(prompts, ordered, strict=True))
    for image, caption in zip(ordered_images, ordered, strict=True):
        assert check(image, caption).ok  # a true description of the same scene
        first, second = parse(caption).objects
        xs = {k: [d.cx for d in detect(image) if (d.colour, d.shape) == (o.colour, o.shape)]
              for k, o in (("first", first), ("second", second))}  # fmt: skip
        swapped = f"{second.phrase(second.count > 1)} and {first.phrase(first.count > 1)}"
        if (first.colour, first.shape) != (second.colour, second.shape) and swapped in train:
            assert np.mean(xs["first"]) <= np.mean(xs["second"]) + 0.5


def test_pair_order_is_checked_before_any_work():
    from latentalign.cli import build_parser
    from latentalign.world.dataset import PAIR_ORDERS

    with pytest.raises(ValueError, match="pair_order"):
        build_dataset(3, pair_order="right-to-left", progress=False)
    for order in PAIR_ORDERS:  # the CLI's own copy of the choices takes every one
        assert build_parser().parse_args(["train", "flow", "--pair-order", order]).pair_order == order
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "flow", "--pair-order", "right-to-left"])


def test_build_dataset_respects_split():
    _, prompts = build_dataset(20, seed=0, split="heldout", progress=False)
    heldout = {p for name in SUITE_NAMES for p in suite(name, "heldout")}
    assert set(prompts) <= heldout
    with pytest.raises(ValueError):
        build_dataset(0, progress=False)


def test_inverse_phrasing_describes_the_same_scene():
    prompt = "a red circle left of a cyan diamond"
    assert inverse_phrasing(prompt) == "a cyan diamond right of a red circle"
    assert inverse_phrasing(inverse_phrasing(prompt)) == prompt
    for seed in range(20):
        assert check(render(prompt, seed), inverse_phrasing(prompt)).ok
    with pytest.raises(ValueError):
        inverse_phrasing("a red circle and a blue square")


def test_checker_tolerates_a_decoder_like_blur():
    """A soft decoder rounds corners and smears vertices: shapes must still be told apart."""
    rng = random.Random(7)
    pairs = [(p, rng.randrange(2**31)) for name in SUITE_NAMES for p in rng.sample(suite(name, "all"), 15)]
    accepted = [check(render(p, s).filter(ImageFilter.GaussianBlur(0.5)), p).ok for p, s in pairs]
    assert sum(accepted) >= 0.95 * len(pairs)


def test_sample_prompts_follows_category_weights():
    prompts = sample_prompts(400, random.Random(0), weights=[0, 0, 1, 0])
    assert {category_of(p) for p in prompts} == {"relation"}


def test_crowded_scenes_render_and_pass_the_checker():
    crowded = ["six red circles", "three blue squares and three green diamonds", "two cyan triangles and a red circle"]
    for prompt in crowded:
        for seed in range(10):
            assert check(render(prompt, seed), prompt).ok
