"""Tiny randomly initialised vision-language models, saved like hub checkpoints for the `hf` captioner.

The output layer's bias is pushed toward one token so greedy decoding is predictable: a word ("river",
repeated) or the end-of-text token at once (an empty caption).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["a", "satellite", "image", "of", "river", "forest", "field", "water", "town", "describe", "this"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
TEXT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
VISION = {**TEXT, "image_size": 32, "patch_size": 8}


def bert_tokenizer(bos: bool = False):
    from transformers import BertTokenizer

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    return BertTokenizer(vocab=vocab, bos_token="[DEC]") if bos else BertTokenizer(vocab=vocab)


def favour(bias: torch.Tensor, token_id: int) -> None:
    with torch.no_grad():
        bias.zero_()
        bias[token_id] = 30.0


def save_tiny_blip(folder: Path, says: str = "river") -> Path:
    """BLIP image-to-text model whose greedy caption is `says` repeated ("" for end-of-text at once)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = bert_tokenizer(bos=True)
    text = {
        **TEXT,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 64,
        "bos_token_id": 5,
        "pad_token_id": 0,
        "sep_token_id": 3,
        "eos_token_id": 3,
    }
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(
        BlipConfig(text_config=text, vision_config=VISION, projection_dim=16)
    )
    favour(model.text_decoder.get_output_embeddings().bias, tokenizer.convert_tokens_to_ids(says or "[SEP]"))
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_git(folder: Path, says: str = "river") -> Path:
    """GIT (decoder-only image-to-text) model whose greedy caption is `says` repeated."""
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tokenizer = bert_tokenizer()
    config = GitConfig(
        vision_config=VISION,
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        **TEXT,
    )
    torch.manual_seed(0)
    model = GitForCausalLM(config)
    favour(model.output.bias, tokenizer.convert_tokens_to_ids(says or "[SEP]"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    GitProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def save_text_model(folder: Path) -> Path:
    """A folder holding a (tiny) BERT text model: loadable by transformers, but no captioning model."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=32, **TEXT)).save_pretrained(folder)
    return folder


def write_prototypes(path: Path, dataset, groups_per_class: int = 2) -> Path:
    """A prototypes.json (CONTRACTS.md layout) splitting each class's train keys into round-robin clusters."""
    entries = []
    for label, name in enumerate(dataset.classes):
        keys = sorted(s.key for s in dataset.train if s.label == label)
        for cluster in range(groups_per_class):
            members = keys[cluster::groups_per_class]
            entries.append(
                {
                    "id": f"{name}/{cluster}",
                    "class": name,
                    "label": label,
                    "cluster": cluster,
                    "source_key": members[0],
                    "cluster_size": len(members),
                    "members": members,
                    "member_distances": [0.0] * len(members),
                    "score": 0.0,
                }
            )
    document = {
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "ipc": groups_per_class,
        "encoder": "test",
        "rule": "medoid",
        "alpha": 1.0,
        "seed": 0,
        "resolution": 32,
        "classes": dataset.classes,
        "prototypes": entries,
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "prototypes.json").write_text(json.dumps(document))
    return path


LLAVA_TEMPLATE = (
    "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


def save_tiny_llava(folder: Path, says: str = "river") -> Path:
    """LLaVA instruction model with a chat template. Its output layer is zero, so greedy decoding picks
    token 0, which is `says` ("" puts end-of-text there)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = ["<eos>", "<pad>", "<image>", "USER:", "ASSISTANT:", *WORDS]
    words.insert(0, words.pop(words.index(says or "<eos>")))
    vocab = {word: i for i, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    text = LlamaConfig(
        vocab_size=len(vocab),
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
        bos_token_id=None,
        **TEXT,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION),
        text_config=text,
        image_token_index=vocab["<image>"],
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_TEMPLATE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
