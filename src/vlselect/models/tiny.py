"""Tiny randomly initialised VLMs for tests, the demo and benchmarks.

``build_tiny`` writes a complete Hugging Face model directory (config, weights, processor, tokenizer, chat
template) that loads through the same ``from_pretrained`` path as a real checkpoint (DESIGN.md, "From Hugging Face
transformers"). Nothing is downloaded: the byte-level BPE tokenizer is trained locally with ``tokenizers`` on
``vlselect.world.corpus()`` when that exists, else on a small built-in list of texts.

Families
--------
``llava``
    ``LlavaForConditionalGeneration``: a CLIP vision tower (2 layers, 32 px images, 8 px patches → 16 image tokens
    after dropping CLS), a 2-layer MLP projector and a Llama language model. Chat template in the LLaVA-1.5 style
    (``"USER: <image>\\n… ASSISTANT: …</s>"``).
``qwen2-vl``
    ``Qwen2VLForConditionalGeneration``: the Qwen2-VL vision transformer (2 blocks, 8 px patches, 2×2 merge; a
    32×32 image → 4 image tokens) and a Qwen2 language model with M-RoPE. ChatML template as in Qwen2-VL-Instruct.

Sizes: ``"xs"`` (hidden 32, 4 LLM layers, 32 px images; the default, for tests), ``"s"`` (hidden 64, 8 layers, for
demos), ``"b"`` (hidden 128, 4 layers, vision hidden 64, 24 px images: the benchmark's model, wide enough to learn
the world's skills on a CPU), ``"b8"`` (``"b"`` with 8 language layers: a capacity probe of the bench) and ``"m"``
(hidden 128, 24 layers = the paper's depth, 64 px images → 64 LLaVA image tokens; benchmarks).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

FAMILIES = ("llava", "qwen2-vl")

_SIZES = {
    # size: (llm hidden, llm layers, heads, intermediate, vision hidden, vision layers, image side in px)
    "xs": (32, 4, 2, 64, 32, 2, 32),
    "s": (64, 8, 4, 128, 48, 2, 32),
    "b": (128, 4, 4, 256, 64, 2, 24),  # the benchmark's model: wide and shallow (world-feasibility note's "S")
    "m": (128, 24, 4, 344, 64, 2, 64),  # the paper's depth (24 layers) for benchmarks; 64 image tokens (LLaVA)
    "b8": (128, 8, 4, 256, 64, 2, 24),  # "b" with twice the language layers (issue 12's capacity probe)
}

IMAGE_SIZE = 32
PATCH_SIZE = 8

_FALLBACK_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "What is in the image? The image shows a red circle on a blue background.",
    "How many squares are there? There are three squares.",
    "What color is the triangle? The triangle is green.",
    "Read the text in the image. The text says HELLO WORLD.",
    "Is the circle to the left of the square? Yes, it is to the left.",
    "Describe the scene in detail. Several coloured shapes lie on a grey floor, some overlapping each other.",
    "Answer the question using a single word or phrase. Yellow.",
    "Write a short poem about the sea. The sea is wide, the sea is deep, it sings the sailors all to sleep.",
    "Translate to French: good morning. Bonjour.",
    "What is 2 plus 3? 2 plus 3 is 5. What is 10 minus 4? It is 6.",
    "Which shape is the largest? The largest shape is the purple hexagon in the top right corner.",
    "0 1 2 3 4 5 6 7 8 9 ten eleven twelve hundred thousand",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}<>-_+=*/\\|@#$%^&~`",
]

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] if message['content'] is not string "
    "else message['content'] }}{{ ' ' }}"
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_SPECIAL = {
    "llava": ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
    "qwen2-vl": [
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
        "<|image_pad|>", "<|video_pad|>",
    ],
}


def _corpus(corpus) -> list[str]:
    if corpus is not None:
        return [str(t) for t in corpus]
    try:  # the world's vocabulary, when the world package provides it
        from vlselect import world

        fn = getattr(world, "corpus", None)
        if fn is not None:
            texts = [str(t) for t in fn()]
            if texts:
                return texts
    except Exception:  # noqa: BLE001 - any failure falls back to the built-in texts
        pass
    return list(_FALLBACK_CORPUS)


def _train_tokenizer(family: str, texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL[family],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _fast_tokenizer(family: str, tok):
    from transformers import PreTrainedTokenizerFast

    if family == "llava":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
            extra_special_tokens={"image_token": "<image>"}, padding_side="right", model_max_length=4096,
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        padding_side="right", model_max_length=4096,
    )


def build_tiny(out_dir, family: str = "llava", *, seed: int = 0, corpus=None, size: str = "xs",
               image_size: int | None = None, initializer_range: float | None = None) -> Path:
    """Build and save a tiny randomly initialised VLM with its processor.

    Parameters
    ----------
    out_dir : path-like
        Directory to write (created; files in it are overwritten).
    family : {"llava", "qwen2-vl"}
        Architecture family.
    seed : int
        Seed of the weight initialisation; the same seed gives the same weight bytes.
    corpus : iterable of str, optional
        Texts to train the tokenizer on. Default: ``vlselect.world.corpus()`` if available, else built-in texts.
    size : {"xs", "s", "b", "b8", "m"}
        Model size (see module docstring).
    image_size : int, optional
        Image side in pixels (default: the size's own, 32 or 64). A multiple of the 8 px patch (LLaVA) or of 16 px
        (Qwen2-VL merges 2x2 patches). 24 px puts each cell of the world's 3x3 grid on exactly one patch.
    initializer_range : float, optional
        Standard deviation of the random weight initialisation of the language model (transformers' default 0.02).
        A larger value (e.g. 0.1-0.2) lets a tiny model trained with LoRA move away from uniform outputs sooner.

    Returns
    -------
    Path
        ``out_dir``.

    Examples
    --------
    >>> from vlselect.models.tiny import build_tiny
    >>> path = build_tiny("/tmp/tiny-llava", family="llava")  # doctest: +SKIP
    """
    from vlselect.errors import ConfigError

    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    if size not in _SIZES:
        raise ConfigError(f"unknown tiny model size {size!r}; choose one of {', '.join(_SIZES)}")

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hidden, layers, heads, inter, vhidden, vlayers, default_side = _SIZES[size]
    image_size = int(image_size or default_side)
    step = PATCH_SIZE if family == "llava" else 2 * PATCH_SIZE
    if image_size <= 0 or image_size % step:
        raise ConfigError(f"image_size {image_size} px is not a positive multiple of {step} px ({family} patches)")
    init = {} if initializer_range is None else {"initializer_range": float(initializer_range)}

    tok = _fast_tokenizer(family, _train_tokenizer(family, _corpus(corpus), vocab_size=512))
    vocab = len(tok)
    special = {t: tok.convert_tokens_to_ids(t) for t in _SPECIAL[family]}

    if family == "llava":
        from transformers import (
            CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        vcfg = CLIPVisionConfig(
            hidden_size=vhidden, intermediate_size=2 * vhidden, num_hidden_layers=vlayers, num_attention_heads=2,
            image_size=image_size, patch_size=PATCH_SIZE, projection_dim=vhidden,
        )
        tcfg = LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
            bos_token_id=special["<s>"], eos_token_id=special["</s>"], pad_token_id=special["<pad>"], **init,
        )
        cfg = LlavaConfig(
            vision_config=vcfg, text_config=tcfg, image_token_index=special["<image>"],
            vision_feature_layer=-2, vision_feature_select_strategy="default",
        )
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(cfg)
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        )
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=tok, patch_size=PATCH_SIZE, num_additional_image_tokens=1,
            vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
        )
    else:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        head_dim = hidden // heads
        vcfg = dict(
            depth=vlayers, embed_dim=vhidden, hidden_size=hidden, num_heads=2, patch_size=PATCH_SIZE,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3, mlp_ratio=2,
        )
        sec = head_dim // 2
        mrope = [sec - 2 * (sec // 3), sec // 3, sec // 3]
        tcfg = dict(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            bos_token_id=special["<|endoftext|>"], eos_token_id=special["<|im_end|>"],
            pad_token_id=special["<|endoftext|>"], **init,
        )
        cfg = Qwen2VLConfig(
            vision_config=vcfg, text_config=tcfg, image_token_id=special["<|image_pad|>"],
            video_token_id=special["<|video_pad|>"], vision_start_token_id=special["<|vision_start|>"],
            vision_end_token_id=special["<|vision_end|>"],
        )
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(cfg)
        image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": image_size * image_size, "longest_edge": image_size * image_size},
            patch_size=PATCH_SIZE, merge_size=2, temporal_patch_size=2,
        )
        from vlselect.models.load import make_processor

        processor = make_processor(
            Qwen2VLProcessor, image_processor=image_processor, tokenizer=tok, chat_template=QWEN2VL_CHAT_TEMPLATE,
        )

    model.eval()
    with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-build-") as tmp:
        model.save_pretrained(tmp)
        if family == "qwen2-vl" and getattr(processor, "video_processor", None) is None:
            # no torchvision: save the parts; load_vlm re-assembles them (see vlselect.models.load)
            processor.image_processor.save_pretrained(tmp)
            processor.tokenizer.save_pretrained(tmp)
            Path(tmp, "chat_template.jinja").write_text(processor.chat_template)
            Path(tmp, "processor_config.json").write_text(json.dumps({"processor_class": type(processor).__name__}))
        else:
            processor.save_pretrained(tmp)
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), out / name)
    from vlselect.artifact import atomic_write_text

    # written last, atomically: a build cut short never looks like a finished tiny model
    atomic_write_text(out / "vlselect_tiny.json", json.dumps({"family": family, "seed": seed, "size": size}) + "\n")
    return out
