"""Token-level judges: a score for every meaningful word of a prompt, not one bit per image.

The noise-projection paper (arXiv 2510.14526) asks a VLM to score each meaningful token of the prompt from 0 to 9
and distils those scores into a reward model. A `TokenJudge` is that feedback behind one call:

    judge(images, prompts) -> [TokenScores(words={word index: score in [0, 1]}, image=score in [0, 1]), ...]

Word indices count the prompt's words split on spaces and commas. Three judges:

- `ShapesTokenJudge`: the Shapes world's exact checker, word by word (`world.checker.word_verdicts`);
- `QuestionTokenJudge`: your VLM, or anything that answers "how well does this image show WORD of PROMPT, 0-9";
- `CLIPTokenJudge`: any pixel scorer (a CLIP you have), by leaving each word out of the prompt: a word scores high
  when the image matches the prompt better with the word than without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# words that carry no content of their own: never scored
STOP_WORDS = frozenset(
    "a an the and or of to in on at by with from for is are be this that these those it its as into onto near "
    "next".split()
)


@dataclass(frozen=True)
class TokenScores:
    """One image's token-level feedback: each scored word's index in the prompt and its score in [0, 1], and the
    image's overall score in [0, 1] (whether it follows the prompt as a whole)."""

    words: dict[int, float]
    image: float


def prompt_words(prompt: str) -> list[str]:
    """The prompt's words as token judges index them (lower case, split on spaces and commas)."""
    return prompt.lower().replace(",", " ").split()


def content_words(prompt: str) -> list[int]:
    """Indices of the words a general token judge scores: every word outside `STOP_WORDS`."""
    return [i for i, w in enumerate(prompt_words(prompt)) if w not in STOP_WORDS]


def shapes_word_roles(prompt: str) -> dict[int, str] | None:
    """A Shapes prompt's judged words, {word index: role ("count", "colour", "shape", "relation")}; None when the
    prompt is not a Shapes prompt."""
    from ..world import parse
    from ..world.checker import words_judged
    from ..world.grammar import PromptError

    try:
        return {v.index: v.role for v in words_judged([], parse(prompt), prompt)[0]}
    except PromptError:
        return None


def scored_word_mask(prompts: Sequence[str], n: int) -> torch.Tensor:
    """(batch, n) floats, 1 where a word is one a token judge scores: on Shapes prompts every word the checker
    judges (all but "and"), elsewhere `content_words`."""
    mask = torch.zeros(len(prompts), n)
    for row, prompt in enumerate(prompts):
        roles = shapes_word_roles(prompt)
        indices = content_words(prompt) if roles is None else list(roles)
        mask[row, [i for i in indices if i < n]] = 1.0
    return mask


class TokenJudge:
    """The interface: `judge(images, prompts)` -> one `TokenScores` per image (PIL images, one prompt each)."""

    def __call__(self, images: Sequence, prompts: Sequence[str]) -> list[TokenScores]:
        raise NotImplementedError


class ShapesTokenJudge(TokenJudge):
    """The Shapes checker's word verdicts (1 honoured, 0 not): colour, shape, count (the article or number) and
    relation words; the image score is the checker's verdict, which also fails an extra object no word owns."""

    def __call__(self, images: Sequence, prompts: Sequence[str]) -> list[TokenScores]:
        from ..world.checker import word_verdicts

        out = []
        for image, prompt in zip(images, prompts, strict=True):
            verdicts, clean = word_verdicts(image, prompt)
            words = {v.index: float(v.ok) for v in verdicts}
            out.append(TokenScores(words, float(clean and all(v.ok for v in verdicts))))
        return out


class QuestionTokenJudge(TokenJudge):
    """A judge you ask word by word, as the paper asks its VLM: `ask(image, prompt, word) -> a score 0..9`.

    The image score is the lowest word score (an image follows its prompt when it honours every word)."""

    def __init__(self, ask: Callable[[object, str, str], float], scale: float = 9.0):
        if not callable(ask):
            raise ValueError(f"ask must be callable as ask(image, prompt, word) -> score, got {type(ask).__name__}")
        self.ask, self.scale = ask, float(scale)

    def __call__(self, images: Sequence, prompts: Sequence[str]) -> list[TokenScores]:
        out = []
        for image, prompt in zip(images, prompts, strict=True):
            words = prompt_words(prompt)
            scores = {}
            for i in content_words(prompt):
                value = float(self.ask(image, prompt, words[i]))
                if not 0 <= value <= self.scale:
                    raise ValueError(f"ask returned {value} for {words[i]!r}, outside 0..{self.scale:g}")
                scores[i] = value / self.scale
            out.append(TokenScores(scores, min(scores.values(), default=1.0)))
        return out


class CLIPTokenJudge(TokenJudge):
    """Leave-one-out token scores from a pixel scorer (`scorer.space == "pixels"`, e.g. a CLIP you load with
    `PixelCLIPScorer.from_pretrained`): word i scores sigmoid(sharpness * (s(prompt) - s(prompt without word i))),
    and the image scores sigmoid(sharpness * (s(prompt) - offset)). Coarse (a dual encoder reads bags of words), but
    it runs on any CLIP and needs nothing else."""

    def __init__(self, scorer, sharpness: float = 50.0, offset: float = 0.25):
        if getattr(scorer, "space", None) != "pixels":
            raise ValueError("CLIPTokenJudge reads images: pass a pixel scorer (space 'pixels')")
        self.scorer, self.sharpness, self.offset = scorer, float(sharpness), float(offset)

    @torch.no_grad()
    def __call__(self, images: Sequence, prompts: Sequence[str]) -> list[TokenScores]:
        import numpy as np

        out = []
        for image, prompt in zip(images, prompts, strict=True):
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
            pixels = pixels.permute(2, 0, 1)[None].to(self.scorer.device)
            words, scored = prompt_words(prompt), content_words(prompt)
            texts = [" ".join(words)] + [" ".join(w for j, w in enumerate(words) if j != i) for i in scored]
            s = self.scorer.score(pixels.expand(len(texts), -1, -1, -1), texts).float().cpu()
            gain = torch.sigmoid(self.sharpness * (s[0] - s[1:]))
            image_score = torch.sigmoid(self.sharpness * (s[0] - self.offset)).item()
            out.append(TokenScores({i: g.item() for i, g in zip(scored, gain, strict=True)}, image_score))
        return out
