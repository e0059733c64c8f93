"""A :class:`~vlselect.pool.Sample` → model inputs with answer-only labels and image / text masks; batch collation.

Spec: coincide.md §1.2 (prompt and tokenisation), §1.4 (pooling windows), §7.2 (labels for the loss).

How it works
------------
1. The LLaVA-style turns become chat messages (``human`` → user, ``gpt`` → assistant, ``system`` → system). The
   ``<image>`` tags are removed from the text and one image item per image is put at the start of the first user
   message (where LLaVA puts it, spec §1.2).
2. The processor's chat template renders the whole conversation. For each assistant turn *k*, the template is also
   rendered for turns ``[:k]`` with ``add_generation_prompt=True`` and for ``[:k+1]``; the characters between the
   two (trailing whitespace dropped) are that answer: its text and the template's end-of-turn marker (``</s>``,
   ``<|im_end|>``), which the model must learn to emit. Tokens starting inside such a span get labels; all other
   positions are -100. This works for any template without ``{% generation %}`` markers.
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

from pathlib import Path
from typing import Any

from vlselect.errors import ModelError, PoolError

IGNORE_INDEX = -100
_SENTINEL = "\u2063VLSELECT_TEXT_START\u2063"


def _messages(sample, with_sentinel: bool = False) -> list[dict[str, Any]]:
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


def _render(processor, messages, add_generation_prompt=False) -> str:
    try:
        out = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # noqa: BLE001 - no template, or a template that rejects the conversation
        raise ModelError(f"the processor's chat template cannot render this conversation ({type(exc).__name__}: "
                         f"{exc}); fix: give the model directory a chat_template.jinja (or a processor with "
                         "chat_template) that accepts user/assistant/system messages") from exc
    return out if isinstance(out, str) else out[0]


def _load_image(sample, rel: str, image_root, pad_to_square: bool, fill):
    from PIL import Image, UnidentifiedImageError

    path = Path(image_root) / rel if image_root is not None else Path(rel)
    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGB")
    except FileNotFoundError as exc:
        raise PoolError(f"sample '{sample.id}': image '{path}' does not exist; fix: check --images (the image "
                        "folder) or use --skip-bad to record the row as missing") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise PoolError(f"sample '{sample.id}': image '{path}' cannot be read ({exc}); fix: replace the file or use "
                        "--skip-bad to record the row as missing") from exc
    if pad_to_square and img.width != img.height:  # LLaVA-1.5 'pad' aspect (spec §1.2)
        side = max(img.width, img.height)
        canvas = Image.new("RGB", (side, side), fill)
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = canvas
    return img


def encode_sample(loaded, sample, image_root=None, *, max_length: int | None = None,
                  pad_to_square: bool | None = None) -> dict:
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

    Returns
    -------
    dict of str to torch.Tensor
        ``input_ids`` (T,), ``attention_mask`` (T,), ``labels`` (T,), ``image_mask`` (T,) bool, ``text_mask`` (T,)
        bool (see the module docstring), ``mm_token_type_ids`` (T,) when the model's forward takes it (Qwen2-VL:
        1 on image tokens), and for image rows ``pixel_values`` (+ ``image_grid_thw`` for Qwen2-VL).

    Raises
    ------
    PoolError
        A missing or unreadable image (names the sample id and path), or a malformed conversation.
    ModelError
        The template / tokenizer alignment fails, or the sequence exceeds ``max_length``.
    """
    import torch

    processor = loaded.processor
    tok = processor.tokenizer
    messages = _messages(sample)
    full = _render(processor, messages)

    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _render(processor, messages[:k], add_generation_prompt=True)
        upto = _render(processor, messages[: k + 1])
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise ModelError(f"sample '{sample.id}': the chat template of '{loaded.model_dir}' does not render "
                             "conversations incrementally, so the answer tokens cannot be located; fix: use a "
                             "model whose template renders each turn after the previous ones")
        spans.append((len(prefix), len(upto.rstrip())))

    # where the first user message's text starts (the text window of a text-only row begins there)
    text_start = max(_render(processor, _messages(sample, with_sentinel=True)).find(_SENTINEL), 0)

    images = None
    if sample.images:
        ip = processor.image_processor
        if pad_to_square is None:
            pad_to_square = loaded.family == "llava"
        mean = getattr(ip, "image_mean", None) or [0.5, 0.5, 0.5]
        fill = tuple(int(255 * float(m)) for m in mean)
        images = [_load_image(sample, rel, image_root, pad_to_square, fill) for rel in sample.images]

    plain = tok(full, return_offsets_mapping=True)
    plain_ids = list(plain["input_ids"])
    offsets = list(plain["offset_mapping"])
    try:
        enc = processor(text=[full], images=images, return_tensors="pt") if images else \
            processor(text=[full], return_tensors="pt")
    except Exception as exc:  # noqa: BLE001
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
