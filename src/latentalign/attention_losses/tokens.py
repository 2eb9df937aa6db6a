"""Words to token positions for the attention losses: subjects (multi-token words grouped, every occurrence its own
group) and attribute-noun pairs, for CLIP's BPE and T5's sentencepiece tokenizers alike."""

from __future__ import annotations

from .base import TokenGroups

PUNCTUATION = ".,;:!?\"'()"


def _norm(word: str) -> str:
    return word.strip(PUNCTUATION).lower()


def word_spans(tokenizer, text: str) -> list[tuple[str, tuple[int, ...]]]:
    """Each whitespace-separated word of `text` with the positions of its tokens in `tokenizer(text)` (its
    punctuation's left out), found by
    tokenizing word by word (both tokenizers split at whitespace first, so the pieces concatenate to the whole);
    words past the tokenizer's maximum length are left out (truncated)."""
    ids = tokenizer(text).input_ids
    first = int(tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id])
    spans, pos = [], first
    for word in text.split():
        pieces = tokenizer(word, add_special_tokens=False).input_ids
        span = tuple(range(pos, pos + len(pieces)))
        if ids[pos : pos + len(pieces)] != pieces:
            if pos + len(pieces) > len(ids) - 1:
                break  # truncated from here on
            raise ValueError(f"cannot place the tokens of {word!r} in {text!r}: the tokenizer merges across words")
        core = word.strip(PUNCTUATION)  # "ball," -> the tokens of "ball", not the comma's
        inner = tokenizer(core, add_special_tokens=False).input_ids if core and core != word else pieces
        at = next((k for k in range(len(pieces) - len(inner) + 1) if pieces[k : k + len(inner)] == inner), None)
        if at is not None:
            span = span[at : at + len(inner)]
        spans.append((word, span))
        pos += len(pieces)
    return spans


def _occurrences(spans, phrase: str) -> list[tuple[int, ...]]:
    """Token groups of every occurrence of `phrase` (one or more words) among `spans`."""
    target = [_norm(w) for w in phrase.split()]
    words = [_norm(w) for w, _ in spans]
    found = []
    for i in range(len(words) - len(target) + 1):
        if words[i : i + len(target)] == target:
            found.append(tuple(p for _, span in spans[i : i + len(target)] for p in span))
    return found


def token_groups(
    tokenizer,
    text: str,
    words: list[str] | tuple[str, ...] | None = None,
    attributes: list[tuple[str, str]] | tuple[tuple[str, str], ...] | None = None,
    shapes_world: bool = False,
) -> TokenGroups:
    """The subject and modifier groups of `text`: `words` (every occurrence of each), `attributes` as
    (modifier, noun) pairs (each occurrence of the modifier bound to the nearest following occurrence of its noun).
    On the Shapes world both default to the parsed prompt: its shape nouns, each with its colour."""
    spans = word_spans(tokenizer, text)
    listed = ", ".join(w for w, _ in spans)
    if words is None and shapes_world:
        return _shapes_groups(spans, text)
    if words is None:
        raise ValueError("attention losses need words=[...]: the subject words of the prompt")
    subjects, names = [], []
    for word in words:
        found = _occurrences(spans, word)
        if not found:
            raise ValueError(f"{word!r} is not a word of the prompt {text!r} (its words: {listed})")
        subjects += found
        names += [word] * len(found)
    order = sorted(range(len(subjects)), key=lambda i: subjects[i])
    subjects, names = [subjects[i] for i in order], [names[i] for i in order]
    modifiers, modifier_words, modifies = [], [], []
    for modifier, noun in attributes or ():
        nouns = [i for i, n in enumerate(names) if _norm(n) == _norm(noun)]
        if not nouns:
            raise ValueError(f"attribute pair ({modifier!r}, {noun!r}): {noun!r} is not among the subjects {names}")
        found = _occurrences(spans, modifier)
        if not found:
            raise ValueError(f"{modifier!r} is not a word of the prompt {text!r} (its words: {listed})")
        for group in found:
            after = [i for i in nouns if subjects[i][0] > group[-1]]
            if not after:
                raise ValueError(f"{modifier!r} at tokens {list(group)} has no {noun!r} after it in {text!r}")
            modifiers.append(group)
            modifier_words.append(modifier)
            modifies.append(after[0])
    return TokenGroups(tuple(subjects), tuple(names), tuple(modifiers), tuple(modifier_words), tuple(modifies))


def _shapes_groups(spans, text: str) -> TokenGroups:
    """A Shapes prompt's shape nouns ("circle", "circles") as subjects, the colour before each as its modifier."""
    from ..world.grammar import COLOURS, PLURALS, SHAPES

    subjects, names, modifiers, modifier_words, modifies = [], [], [], [], []
    for i, (word, span) in enumerate(spans):
        w = _norm(word)
        if w in SHAPES or w in PLURALS:
            subjects.append(span)
            names.append(w)
            if i > 0 and _norm(spans[i - 1][0]) in COLOURS:
                modifiers.append(spans[i - 1][1])
                modifier_words.append(_norm(spans[i - 1][0]))
                modifies.append(len(subjects) - 1)
    if not subjects:
        raise ValueError(f"no shape noun in {text!r} to attend to (a Shapes prompt names {', '.join(SHAPES)})")
    return TokenGroups(tuple(subjects), tuple(names), tuple(modifiers), tuple(modifier_words), tuple(modifies))
