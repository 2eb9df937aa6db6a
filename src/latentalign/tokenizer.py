"""A CLIP BPE tokenizer built locally from a word list, so no tokenizer is ever downloaded."""

from __future__ import annotations

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    """The byte-level alphabet GPT-2 and CLIP use: printable bytes map to themselves, the rest are shifted."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, shift = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shift))
            shift += 1
    return chars


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Learn BPE merges on the word list until every word is one symbol (merges replayed by rank rebuild it)."""
    from collections import Counter

    segs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for s in segs.values() for p in zip(s, s[1:], strict=False))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties broken alphabetically
        merges.append(best)
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out


def build_clip_tokenizer(words: list[str] | tuple[str, ...], model_max_length: int = 16) -> CLIPTokenizer:
    """Build a `CLIPTokenizer` whose BPE merges turn every word of `words` into one token.

    Any other text still tokenizes (letter by letter, through the byte-level alphabet), exactly as a real
    CLIP tokenizer falls back on sub-words.
    """
    words = sorted({w.lower() for w in words})
    if not words or any(not w.isalpha() for w in words):
        raise ValueError("build_clip_tokenizer needs a non-empty list of alphabetic words")
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    add(BOS)
    add(EOS)
    for ch in _bytes_to_unicode():
        add(ch)
        add(ch + "</w>")
    merges = _learn_merges(words)
    for left, right in merges:
        add(left + right)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    for w in words:
        ids = tok(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer construction failed: {w!r} -> {tok.convert_ids_to_tokens(ids)}")
    return tok


def build_t5_tokenizer(words: list[str] | tuple[str, ...], model_max_length: int = 512):
    """Build a T5 (SentencePiece Unigram) tokenizer in which every word of `words` is one piece ("▁word").

    Any other text still tokenizes, letter by letter, as T5's falls back on pieces; no model file is downloaded.
    """
    from transformers import T5Tokenizer

    words = sorted({w.lower() for w in words})
    if not words or any(not w.isalpha() for w in words):
        raise ValueError("build_t5_tokenizer needs a non-empty list of alphabetic words")
    letters = sorted({c for c in "abcdefghijklmnopqrstuvwxyz" + "".join(words)})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -1.0) for w in words] + [(c, -5.0) for c in letters]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    for w in words:
        ids = tok(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer construction failed: {w!r} -> {tok.convert_ids_to_tokens(ids)}")
    return tok
