"""Stage 3: captions for every train image and one aggregated prompt per prototype cluster.

Python API::

    from rsdistill.captioning import run_captions, load_captions, load_prompts
    folder = run_captions(dataset, CaptionConfig(), run_dir / "captions", resolution=64,
                          prototypes=run_dir / "prototypes")
    captions = load_captions(folder)   # {"River/River_1.jpg": "a satellite image of a river scene, ..."}
    prompts = load_prompts(folder)     # [{"id": "River/0", "class": "River", "label": 8, "prompt": ..., ...}]
"""

from rsdistill.captioning.aggregate import RULES, Group, PromptFitter, TextEmbedder, aggregate
from rsdistill.captioning.attributes import AttributeCaptioner, measure
from rsdistill.captioning.stage import build_captioner, load_captions, load_prompts, read_prototypes, run_captions
from rsdistill.data.names import plain_words, scene_phrase

__all__ = [
    "RULES",
    "AttributeCaptioner",
    "Group",
    "PromptFitter",
    "TextEmbedder",
    "aggregate",
    "build_captioner",
    "load_captions",
    "load_prompts",
    "measure",
    "plain_words",
    "read_prototypes",
    "run_captions",
    "scene_phrase",
]
