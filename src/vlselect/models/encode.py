"""A :class:`~vlselect.pool.Sample` → model inputs with answer-only labels and image / text masks; batch collation.

Spec: coincide.md §1.2 (prompt and tokenisation), §1.4 (pooling windows), §7.2 (labels for the loss).

Templates
---------
How a conversation becomes text is a choice (``template=``, ``loaded.extra["template"]`` or ``$VLSELECT_TEMPLATE``):

``"llava_v1"`` (default for LLaVA-family checkpoints, e.g. llava-hf's, whose chat template supervises no
end-of-turn token)
    LLaVA-1.5's training format, as ``preprocess_multimodal`` + ``preprocess_v1`` of the official ``llava``
    package render it: the Vicuna-v1 system prompt, ``USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: …``
    (the ``<image>`` tag is removed from the first human turn, the text stripped and the image put first); each
    answer **and the ``</s>`` after it** is supervised, as in LLaVA-1.5 training. A leading BOS is added when the
    tokenizer does not add one. Checked against the official preprocessing (``tests/data/llava_preprocess``).
``"chat_template"`` (default for the other families, e.g. Qwen2-VL, and for LLaVA-family checkpoints whose own
template ends each answer with an end-of-turn marker, such as the tiny test models)
    The processor's own chat template; a path to a Jinja file uses that template instead.

How it works
------------
1. The LLaVA-style turns become chat messages (``human`` → user, ``gpt`` → assistant, ``system`` → system). The
   ``<image>`` tags are removed from the text and one image item per image is put at the start of the first user
   message (where LLaVA puts it, spec §1.2).
2. ``llava_v1`` renders the text and the answer spans directly. For a Jinja template, the whole conversation is
   rendered; for each assistant turn *k*, the template is also rendered for turns ``[:k]`` with
   ``add_generation_prompt=True`` and for ``[:k+1]``; the characters between the two (trailing whitespace
   dropped) are that answer: its text and the template's end-of-turn marker (``</s>``, ``<|im_end|>``), which the
   model must learn to emit. A template that puts no marker after the answer (llava-1.5-hf's own chat template)
   raises a :class:`TemplateWarning`. Tokens starting inside such a span get labels; all other positions are
   -100. This works for any template without ``{% generation %}`` markers.
3. The processor tokenises the text and expands each image placeholder into the model's image tokens; the plain
   tokenizer's offsets (on the unexpanded text) are aligned to the processor's ids by skipping image-token runs,
   and the alignment is checked token by token (a mismatch raises :class:`ModelError`).

Masks
-----
``image_mask``
    positions holding the model's image token id (the ones replaced by vision features).
``text_mask``
    the *text window*: for a row with an image, every non-padding, non-image position **after the row's last image
    token** (the "\\n", the question, later role markers, answers, end-of-turn tokens); for a text-only row,
    every position from the start of the first user message's text onward. Image boundary markers
    (``LoadedVLM.image_boundary_ids``, e.g. Qwen2-VL's ``<|vision_end|>``) are in neither mask. The system prompt and the first role
    header are not text, as in the official window (positions ≥ 760 = after the 31-token prefix and 729 image
    tokens, spec §1.4), but the window is located per sample from the tokens instead of at fixed offsets.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlselect.errors import ModelError, PoolError

IGNORE_INDEX = -100
_SENTINEL = "\u2063VLSELECT_TEXT_START\u2063"

#: The conversation template of LLaVA-1.5 training (``conv_vicuna_v1`` in ``llava/conversation.py``).
LLAVA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_V1_ROLES = ("USER", "ASSISTANT")
LLAVA_V1_SEP, LLAVA_V1_SEP2 = " ", "</s>"

#: Template names :func:`encode_sample` accepts besides a path to a Jinja chat-template file.
TEMPLATES = ("llava_v1", "chat_template")

#: Environment variable read by :func:`resolve_template` when no template is passed (e.g. ``chat_template``).
TEMPLATE_ENV = "VLSELECT_TEMPLATE"


class ImageRejectedError(PoolError):
    """An image that decodes but that the model's processor refuses (e.g. Qwen2-VL: aspect ratio over 200).

    A :class:`~vlselect.errors.PoolError`, so ``--skip-bad`` records the row as missing."""


class TemplateWarning(UserWarning):
    """The chosen template supervises no end-of-turn token: a model trained on it does not learn to stop."""


def default_template(loaded) -> str:
    """The default template of a loaded model.

    The LLaVA family: ``"chat_template"`` when the checkpoint's own chat template ends each answer with an
    end-of-turn marker (so training on it teaches the model to stop; e.g. the tiny test models), else
    ``"llava_v1"``, LLaVA-1.5's training format (the llava-hf checkpoints' template ends answers with a space only).
    Every other family: ``"chat_template"`` (Qwen2-VL's ends each turn with ``<|im_end|>``).
    """
    if loaded.family != "llava":
        return "chat_template"
    if "default_template" not in loaded.extra:
        probe = [{"role": "user", "content": [{"type": "text", "text": "Q"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "PROBE"}]}]
        choice = "llava_v1"
        if getattr(loaded.processor, "chat_template", None):
            try:
                prefix = _render(loaded.processor, probe[:1], add_generation_prompt=True)
                full = _render(loaded.processor, probe)
                answer = full[len(prefix):].rstrip() if full.startswith(prefix) else ""
                if "PROBE" in answer and answer[answer.rindex("PROBE") + 5:].strip():  # a marker after the answer
                    choice = "chat_template"
            except ModelError:
                pass
        loaded.extra["default_template"] = choice
    return loaded.extra["default_template"]


def resolve_template(loaded, template: str | os.PathLike | None = None) -> str:
    """The template to use: ``template``, else ``loaded.extra["template"]``, else ``$VLSELECT_TEMPLATE``, else the
    default (:func:`default_template`). Raises :class:`ConfigError` for an unknown name."""
    from vlselect.errors import ConfigError

    t = template if template is not None else (loaded.extra.get("template") or os.environ.get(TEMPLATE_ENV) or
                                              default_template(loaded))
    t = str(t)
    if t in TEMPLATES:
        return t
    if Path(t).is_file():
        return t
    raise ConfigError(f"unknown chat template {t!r}; fix: use 'llava_v1' (LLaVA-1.5 training format), "
                      "'chat_template' (the processor's own) or the path of a Jinja chat-template file")


@dataclass
class RenderedChat:
    """A conversation rendered to text.

    Attributes
    ----------
    text : str
        What is tokenised (image placeholders once per image; a leading BOS string when the tokenizer does not add
        one itself and the template wants it).
    answer_spans : list of (int, int)
        Character spans of ``text`` that are supervised: each answer with the end-of-turn marker after it.
    text_start : int
        Where the first user message's text starts (the text window of a text-only row begins there).
    """

    text: str
    answer_spans: list
    text_start: int


def _strip_image_tags_llava(text: str) -> str:
    # llava/train/train.py preprocess_multimodal: the tag is removed, the rest stripped, and the image goes first
    return text.replace("<image>", "").strip()


def _messages(sample, with_sentinel: bool = False, *, official_tags: bool = False) -> list[dict[str, Any]]:
    role_of = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    turns = list(sample.conversations)
    messages: list[dict[str, Any]] = []
    first_user_done = False
    for i, turn in enumerate(turns):
        who = role_of.get(str(turn.get("from", "")).lower())
        if who is None:
            raise PoolError(f"sample '{sample.id}': turn {i} has an unknown speaker {turn.get('from')!r}; fix: use "
                            "'human' or 'gpt' (or 'system') in the 'from' field")
        if who == "assistant" and not first_user_done:
            continue  # a leading answer turn is dropped, as in LLaVA's preprocessing (spec §1.2)
        # the <image> tag only marks where the image goes; it is never text (also not in text-only rows)
        text = str(turn.get("value", ""))
        if who == "user" and not first_user_done:
            if official_tags and sample.images:
                text = _strip_image_tags_llava(text)
            else:
                text = text.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()
            content = [{"type": "image"} for _ in sample.images]
            content.append({"type": "text", "text": (_SENTINEL + text) if with_sentinel else text})
            first_user_done = True
        else:
            content = [{"type": "text", "text": text.replace("<image>", "")}]
        messages.append({"role": who, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise PoolError(f"sample '{sample.id}' has no answer ('gpt') turn; fix: every record needs at least one "
                        "'gpt' turn, or drop the record from the pool")
    return messages


def _text_of(message) -> str:
    return "".join(c.get("text", "") for c in message["content"] if c.get("type") == "text")


def _bos_prefix(tok) -> str:
    """The BOS string to put in front of the text, or ``""`` when the tokenizer adds BOS itself (or has none)."""
    bos = getattr(tok, "bos_token", None)
    if not bos or tok.bos_token_id is None:
        return ""
    ids = tok("a")["input_ids"]
    return "" if (ids and ids[0] == tok.bos_token_id) else bos


def _render_llava_v1(loaded, messages, *, add_generation_prompt: bool = False) -> RenderedChat:
    """LLaVA-1.5's ``conv_vicuna_v1.get_prompt()`` on the messages, with the spans ``preprocess_v1`` supervises."""
    image_token = getattr(loaded.processor, "image_token", None) or "<image>"
    system = LLAVA_V1_SYSTEM
    if messages and messages[0]["role"] == "system":
        system = _text_of(messages[0])
        messages = messages[1:]
    text = _bos_prefix(loaded.processor.tokenizer) + system + LLAVA_V1_SEP
    spans: list = []
    text_start = -1
    for m in messages:
        if m["role"] == "system":
            continue  # LLaVA has one system prompt; a later system turn is not rendered
        if m["role"] == "user":
            n_img = sum(1 for c in m["content"] if c.get("type") == "image")
            text += LLAVA_V1_ROLES[0] + ": " + (image_token + "\n") * n_img
            if text_start < 0:
                text_start = len(text)
            text += _text_of(m) + LLAVA_V1_SEP
        else:
            text += LLAVA_V1_ROLES[1] + ":"
            start = len(text)  # the space before the answer belongs to the answer's first token (preprocess_v1)
            text += " " + _text_of(m) + LLAVA_V1_SEP2
            spans.append((start, len(text)))
    if add_generation_prompt:
        text += LLAVA_V1_ROLES[1] + ":"
    return RenderedChat(text=text, answer_spans=spans, text_start=max(text_start, 0))


def _render(processor, messages, add_generation_prompt=False, chat_template=None) -> str:
    kwargs = {"chat_template": chat_template} if chat_template is not None else {}
    try:
        out = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                            **kwargs)
    except Exception as exc:  # noqa: BLE001 - no template, or a template that rejects the conversation
        raise ModelError(f"the processor's chat template cannot render this conversation ({type(exc).__name__}: "
                         f"{exc}); fix: give the model directory a chat_template.jinja (or a processor with "
                         "chat_template) that accepts user/assistant/system messages, or use the template "
                         "'llava_v1'") from exc
    return out if isinstance(out, str) else out[0]


def _jinja_of(template: str):
    """``None`` for the processor's own template, else the text of a template file."""
    if template == "chat_template":
        return None
    try:
        return Path(template).read_text()
    except OSError as exc:
        raise ModelError(f"cannot read the chat template file '{template}' ({exc}); fix: pass an existing "
                         "Jinja file") from exc


def _render_jinja(loaded, sample, messages, template: str) -> RenderedChat:
    processor = loaded.processor
    jinja = _jinja_of(template)
    full = _render(processor, messages, chat_template=jinja)
    spans = []
    missing_end = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _render(processor, messages[:k], add_generation_prompt=True, chat_template=jinja)
        upto = _render(processor, messages[: k + 1], chat_template=jinja)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise ModelError(f"sample '{sample.id}': the chat template '{template}' of '{loaded.model_dir}' does "
                             "not render conversations incrementally, so the answer tokens cannot be located; fix: "
                             "use a template that renders each turn after the previous ones (e.g. 'llava_v1')")
        span = (len(prefix), len(upto.rstrip()))
        spans.append(span)
        answer = _text_of(m).strip()
        seg = full[span[0]:span[1]]
        at = seg.rfind(answer) if answer else len(seg.rstrip())
        if at < 0 or not seg[at + len(answer):].strip():
            missing_end.append(k)
    if missing_end:
        key = ("template_warned", template)
        if not loaded.extra.get(key):
            loaded.extra[key] = True
            warnings.warn(
                f"the chat template '{template}' of '{loaded.model_dir}' puts no end-of-turn marker after the "
                f"answers (sample '{sample.id}'), so no end-of-turn token is supervised and a model fine-tuned on "
                "these labels does not learn to stop; fix: use the template 'llava_v1' for LLaVA-1.5 "
                "(supervises </s> after every answer, as LLaVA-1.5 training does) or a template that ends each "
                "assistant turn with the end-of-turn token", TemplateWarning, stacklevel=3)
    with_sentinel = _messages(sample, with_sentinel=True)
    text_start = max(_render(processor, with_sentinel, chat_template=jinja).find(_SENTINEL), 0)
    return RenderedChat(text=full, answer_spans=spans, text_start=text_start)


def render_sample(loaded, sample, template: str | os.PathLike | None = None) -> RenderedChat:
    """Render a pool sample with the chosen template (see :func:`encode_sample`, parameter ``template``)."""
    t = resolve_template(loaded, template)
    if t == "llava_v1":
        return _render_llava_v1(loaded, _messages(sample, official_tags=True))
    return _render_jinja(loaded, sample, _messages(sample), t)


def generation_prompt(loaded, question: str, n_images: int = 0, template: str | os.PathLike | None = None) -> str:
    """The prompt for answering ``question`` (with ``n_images`` images): the same template as training, rendered up
    to the assistant turn (``… USER: <image>\\nQ ASSISTANT:`` for ``llava_v1``)."""
    t = resolve_template(loaded, template)
    if t == "llava_v1":
        text = _strip_image_tags_llava(question) if n_images else question
        msgs = [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]
        return _render_llava_v1(loaded, msgs, add_generation_prompt=True).text
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
    return _render(loaded.processor, [{"role": "user", "content": content}], add_generation_prompt=True,
                   chat_template=_jinja_of(t))


def load_image(path, *, pad_to_square: bool = False, fill=(127, 127, 127), sample_id: str | None = None):
    """Open and fully decode an image as RGB; optionally pad it to a square with ``fill`` (LLaVA-1.5 "pad" aspect,
    spec §1.2). The one image loader of training, features, evaluation and ``pool check``.

    Raises
    ------
    PoolError
        The file is missing or cannot be decoded (also a truncated file); the message names the sample and path.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    who = f"sample '{sample_id}': " if sample_id is not None else ""
    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGB")
    except FileNotFoundError as exc:
        raise PoolError(f"{who}image '{path}' does not exist; fix: check --images (the image "
                        "folder) or use --skip-bad to record the row as missing") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise PoolError(f"{who}image '{path}' cannot be read ({exc}); fix: replace the file or use "
                        "--skip-bad to record the row as missing") from exc
    if pad_to_square and img.width != img.height:
        side = max(img.width, img.height)
        canvas = Image.new("RGB", (side, side), tuple(fill))
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = canvas
    return img


def image_fill(processor) -> tuple:
    """The padding colour of LLaVA-1.5's "pad" aspect: the image processor's mean, in 0-255."""
    mean = getattr(getattr(processor, "image_processor", None), "image_mean", None) or [0.5, 0.5, 0.5]
    return tuple(int(255 * float(m)) for m in mean)


def model_image(loaded, path, *, pad_to_square: bool | None = None, sample_id: str | None = None):
    """Load an image the way the model is fed: decoded, and padded to a square for the LLaVA family."""
    if pad_to_square is None:
        pad_to_square = loaded.family == "llava"
    return load_image(path, pad_to_square=pad_to_square, fill=image_fill(loaded.processor), sample_id=sample_id)


def check_image_with_processor(processor, img, *, path, sample_id: str | None = None) -> None:
    """Run the model's image processor on ``img``; raise :class:`ImageRejectedError` if it refuses the image."""
    try:
        processor.image_processor(images=[img], return_tensors="pt")
    except Exception as exc:  # noqa: BLE001 - any refusal of the processor is reported with the image named
        who = f"sample '{sample_id}': " if sample_id is not None else ""
        raise ImageRejectedError(f"{who}image '{path}' ({img.width}x{img.height}) is rejected by the model's "
                                 f"processor ({type(exc).__name__}: {exc}); fix: resize or pad the image, or use "
                                 "--skip-bad to record the row as missing") from exc


def encode_sample(loaded, sample, image_root=None, *, max_length: int | None = None,
                  pad_to_square: bool | None = None, template: str | os.PathLike | None = None) -> dict:
    """Encode one sample (unbatched) for ``loaded.model``.

    Parameters
    ----------
    loaded : LoadedVLM
    sample : vlselect.pool.Sample
    image_root : path-like, optional
        Folder the sample's image paths are relative to.
    max_length : int, optional
        If given, a sequence longer than this raises :class:`ModelError` (sequences are never truncated).
    pad_to_square : bool, optional
        Pad images to a square with the processor's mean colour before processing (LLaVA-1.5 "pad" aspect, spec
        §1.2). Default: True for the LLaVA family, False otherwise.
    template : str or path, optional
        How the conversation becomes text (see the module docstring, "Templates"): ``"llava_v1"`` (LLaVA-1.5's
        training format: its system prompt, ``USER:``/``ASSISTANT:``, ``</s>`` supervised after every answer),
        ``"chat_template"`` (the processor's own chat template), or the path of a Jinja chat-template file.
        Default: ``loaded.extra["template"]``, else ``$VLSELECT_TEMPLATE``, else :func:`default_template`
        (``"llava_v1"`` for LLaVA checkpoints whose own template supervises no end-of-turn token, otherwise
        ``"chat_template"``). A template that supervises no end-of-turn token raises a
        :class:`TemplateWarning` (once per model and template).

    Returns
    -------
    dict of str to torch.Tensor
        ``input_ids`` (T,), ``attention_mask`` (T,), ``labels`` (T,), ``image_mask`` (T,) bool, ``text_mask`` (T,)
        bool (see the module docstring), ``mm_token_type_ids`` (T,) when the model's forward takes it (Qwen2-VL:
        1 on image tokens), and for image rows ``pixel_values`` (+ ``image_grid_thw`` for Qwen2-VL).

    Raises
    ------
    PoolError
        A missing or unreadable image (names the sample id and path), or a malformed conversation;
        :class:`ImageRejectedError` (a PoolError) for an image the processor refuses.
    ModelError
        The template / tokenizer alignment fails, or the sequence exceeds ``max_length``.
    """
    import torch

    processor = loaded.processor
    tok = processor.tokenizer
    rendered = render_sample(loaded, sample, template)
    full, spans, text_start = rendered.text, rendered.answer_spans, rendered.text_start

    images = None
    if sample.images:
        images = [model_image(loaded, Path(image_root) / rel if image_root is not None else Path(rel),
                              pad_to_square=pad_to_square, sample_id=sample.id) for rel in sample.images]

    plain = tok(full, return_offsets_mapping=True)
    plain_ids = list(plain["input_ids"])
    offsets = list(plain["offset_mapping"])
    try:
        enc = processor(text=[full], images=images, return_tensors="pt") if images else \
            processor(text=[full], return_tensors="pt")
    except Exception as exc:  # noqa: BLE001
        for rel, img in zip(sample.images, images or []):  # an image the processor refuses: skippable (--skip-bad)
            check_image_with_processor(processor, img, path=rel, sample_id=sample.id)
        raise ModelError(f"sample '{sample.id}': the processor of '{loaded.model_dir}' failed: {exc}") from exc
    ids = enc["input_ids"][0]
    img_id = loaded.image_token_id

    # align processor ids (image placeholders expanded) with the plain tokenisation (one placeholder each)
    src = []
    j = 0
    n = len(ids)
    ids_list = ids.tolist()
    i = 0
    while i < n:
        if img_id is not None and ids_list[i] == img_id:
            if j >= len(plain_ids) or plain_ids[j] != img_id:
                break
            while i < n and ids_list[i] == img_id:
                src.append(-1)
                i += 1
            j += 1
            continue
        if j >= len(plain_ids) or plain_ids[j] != ids_list[i]:
            break
        src.append(j)
        i += 1
        j += 1
    if i != n or j != len(plain_ids):
        raise ModelError(f"sample '{sample.id}': the processor's tokens do not match the tokenizer's on the "
                         f"rendered chat of '{loaded.model_dir}'; fix: check that the processor and tokenizer "
                         "belong together")

    labels = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
    text_mask = torch.zeros(n, dtype=torch.bool)
    image_mask = ids == img_id if img_id is not None else torch.zeros(n, dtype=torch.bool)
    last_img = int(torch.nonzero(image_mask).max()) if bool(image_mask.any()) else -1
    boundary = set(getattr(loaded, "image_boundary_ids", ()) or ())
    for pos, jj in enumerate(src):
        if jj < 0:
            continue
        start, end = offsets[jj]
        if end > start and any(a <= start < b for a, b in spans):
            labels[pos] = ids_list[pos]
        if ids_list[pos] in boundary:
            continue  # image boundary markers (<|vision_start|>, <|vision_end|>) are neither image nor text
        if last_img >= 0:
            text_mask[pos] = pos > last_img
        else:
            text_mask[pos] = end > text_start
    if max_length is not None and n > max_length:
        raise ModelError(f"sample '{sample.id}' has {n} tokens, more than max_length={max_length}; sequences are "
                         "never truncated; fix: raise max_length or remove the sample from the pool")

    out = {
        "input_ids": ids.long(),
        "attention_mask": torch.ones(n, dtype=torch.long),
        "labels": labels,
        "image_mask": image_mask,
        "text_mask": text_mask,
    }
    if _wants_mm_token_type_ids(loaded):
        out["mm_token_type_ids"] = image_mask.long()
    if images:
        out["pixel_values"] = enc["pixel_values"]
        if "image_grid_thw" in enc:
            out["image_grid_thw"] = enc["image_grid_thw"]
        if "image_sizes" in enc:
            out["image_sizes"] = enc["image_sizes"]
    return out


def _wants_mm_token_type_ids(loaded) -> bool:
    if "mm_token_type_ids" not in loaded.extra:
        import inspect

        loaded.extra["mm_token_type_ids"] = "mm_token_type_ids" in inspect.signature(loaded.model.forward).parameters
    return loaded.extra["mm_token_type_ids"]


_CONCAT_KEYS = ("pixel_values", "image_grid_thw", "image_sizes")
_SEQ_KEYS = {"input_ids": None, "attention_mask": 0, "labels": IGNORE_INDEX, "image_mask": False, "text_mask": False}


def collate(encoded_list, pad_token_id: int) -> dict:
    """Right-pad a list of :func:`encode_sample` outputs into a batch.

    ``input_ids`` are padded with ``pad_token_id``, ``attention_mask`` with 0, ``labels`` with -100 and the masks
    with False. Image tensors (``pixel_values``, ``image_grid_thw``, ``image_sizes``) of the rows that have them
    are concatenated along the first axis in row order, which is what LLaVA and Qwen2-VL expect; text-only and
    image rows can be mixed.

    Parameters
    ----------
    encoded_list : list of dict
    pad_token_id : int

    Returns
    -------
    dict of str to torch.Tensor
    """
    import torch

    if not encoded_list:
        raise ModelError("collate() got an empty batch")
    T = max(int(e["input_ids"].shape[0]) for e in encoded_list)
    B = len(encoded_list)
    batch = {}
    keys = dict(_SEQ_KEYS)
    if "mm_token_type_ids" in encoded_list[0]:
        keys["mm_token_type_ids"] = 0
    for key, fill in keys.items():
        fill = pad_token_id if fill is None else fill
        ref = encoded_list[0][key]
        t = torch.full((B, T), fill, dtype=ref.dtype)
        for b, e in enumerate(encoded_list):
            v = e[key]
            t[b, : v.shape[0]] = v
        batch[key] = t
    for key in _CONCAT_KEYS:
        parts = [e[key] for e in encoded_list if key in e]
        if parts:
            batch[key] = torch.cat(parts, dim=0)
    return batch
