"""The Shapes world: compositional prompts, a procedural renderer with exact ground truth, and its checker."""

from .checker import FAILURE_KINDS, Detection, Failure, Verdict, WordVerdict, check, detect, word_verdicts
from .grammar import (
    COLOURS,
    COUNTS,
    IMAGE_SIZE,
    RELATIONS,
    SHAPES,
    ObjectSpec,
    PromptError,
    Scene,
    corrupt,
    inverse_phrasing,
    parse,
    vocabulary,
    words,
)
from .render import render
from .suites import SUITE_NAMES, category_of, suite

__all__ = [
    "COLOURS",
    "COUNTS",
    "FAILURE_KINDS",
    "IMAGE_SIZE",
    "RELATIONS",
    "SHAPES",
    "SUITE_NAMES",
    "Detection",
    "Failure",
    "ObjectSpec",
    "PromptError",
    "Scene",
    "Verdict",
    "WordVerdict",
    "category_of",
    "check",
    "corrupt",
    "inverse_phrasing",
    "detect",
    "parse",
    "render",
    "suite",
    "vocabulary",
    "word_verdicts",
    "words",
]
