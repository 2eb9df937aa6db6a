"""The locally built CLIP tokenizer: one token per Shapes word, and a faithful save/load round trip."""

from __future__ import annotations

import pytest
from transformers import CLIPTokenizer

from latentalign.tokenizer import build_clip_tokenizer
from latentalign.world import SUITE_NAMES, suite, words

PROMPTS = ["a red circle", "three green triangles", "a blue square left of a magenta circle", "a purple hexagon"]


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return build_clip_tokenizer(words(), model_max_length=16)


def test_every_world_word_is_one_token(tokenizer):
    ids = {}
    for w in words():
        ids[w] = tokenizer(w, add_special_tokens=False).input_ids
        assert len(ids[w]) == 1, (w, tokenizer.convert_ids_to_tokens(ids[w]))
    assert len({i[0] for i in ids.values()}) == len(ids)  # distinct words, distinct tokens


def test_prompts_tokenize_word_by_word(tokenizer):
    for name in SUITE_NAMES:
        for prompt in suite(name, "heldout")[:20]:
            ids = tokenizer(prompt).input_ids
            assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
            assert len(ids) == len(prompt.split()) + 2


def test_unknown_words_still_tokenize(tokenizer):
    ids = tokenizer("purple hexagon", add_special_tokens=False).input_ids
    assert len(ids) > 2
    assert tokenizer.unk_token_id not in ids
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids).strip() == "purple hexagon"


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == len(tokenizer)
    assert loaded.model_max_length == tokenizer.model_max_length
    for prompt in PROMPTS:
        assert loaded(prompt).input_ids == tokenizer(prompt).input_ids
    padded = dict(padding="max_length", max_length=16, truncation=True)
    assert loaded(PROMPTS, **padded).input_ids == tokenizer(PROMPTS, **padded).input_ids


def test_padding_to_model_max_length(tokenizer):
    enc = tokenizer(PROMPTS, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    for prompt, ids in zip(PROMPTS, enc.input_ids, strict=True):
        assert len(ids) == tokenizer.model_max_length == 16
        n = len(tokenizer(prompt).input_ids)
        assert all(i == tokenizer.pad_token_id for i in ids[n:])
    long = " ".join(["red"] * 40)
    assert len(tokenizer(long, padding="max_length", truncation=True).input_ids) == 16


def test_model_max_length_is_configurable():
    tok = build_clip_tokenizer(["cat", "dog"], model_max_length=77)
    assert tok.model_max_length == 77
    assert len(tok("cat", padding="max_length").input_ids) == 77


@pytest.mark.parametrize("bad", [[], ["red", "two words"], ["r3d"]])
def test_rejects_bad_word_lists(bad):
    with pytest.raises(ValueError):
        build_clip_tokenizer(bad)
