"""Generate ``pack.json``: LLaVA-1.5's official preprocessing run on fixed records (issue 13, item 1).

Run once, in a side environment with the official package (never in vlselect's own)::

    python -m venv /tmp/llava-venv
    /tmp/llava-venv/bin/pip install "transformers==4.36.2" "tokenizers==0.15.2" sentencepiece protobuf torch pillow
    /tmp/llava-venv/bin/pip install --no-deps llava-torch==1.2.2.post1
    pip download --no-deps mistral_common   # only for its SentencePiece file data/tokenizer.model.v1
    /tmp/llava-venv/bin/python make_pack.py --sp-model .../mistral_common/data/tokenizer.model.v1

What runs is the package's own code, unchanged: ``llava.train.train.preprocess_multimodal`` (the ``<image>`` tag is
moved to the front of its turn) and ``llava.train.train.preprocess`` with ``conversation_lib.default_conversation =
conv_templates["v1"]`` (LLaVA-1.5's ``--version v1``), i.e. ``preprocess_v1``: the Vicuna-v1 system prompt,
``USER:``/``ASSISTANT:`` separators, labels on each answer and the ``</s>`` after it. The tokenizer is a Llama-style
SentencePiece model (the Mistral-7B v0.1 vocabulary from ``mistral_common``, read by ``LlamaTokenizer`` with
``legacy=False`` like Vicuna-v1.5's), padded with ``<unk>`` as LLaVA does.

The pack is tokenizer-independent: per record, the rendered prompt text (``conv.get_prompt()``, with ``<image>``
where the image goes) and the character spans of that text that ``preprocess_v1`` supervises (each contiguous run of
labelled tokens, decoded and located in the text; ``image_token_runs`` of the official ids are not text).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

RECORDS = [
    {"id": "single", "image": "a.png",
     "conversations": [{"from": "human", "value": "<image>\nWhat is in the picture?"},
                       {"from": "gpt", "value": "A red cube on a table."}]},
    {"id": "image_last", "image": "a.png",
     "conversations": [{"from": "human", "value": "What colour is the cube?\n<image>"},
                       {"from": "gpt", "value": "Red."}]},
    {"id": "mid_sentence", "image": "a.png",
     "conversations": [{"from": "human", "value": "Look at <image> this photo. What is shown?"},
                       {"from": "gpt", "value": "Two cats asleep on a sofa."}]},
    {"id": "multi_turn", "image": "a.png",
     "conversations": [{"from": "human", "value": "<image>\nHow many shapes are there?\nAnswer the question using "
                                                   "a single word or phrase."},
                       {"from": "gpt", "value": "3"},
                       {"from": "human", "value": "Which one is largest?"},
                       {"from": "gpt", "value": "The blue circle is the largest one."},
                       {"from": "human", "value": "Is it on the left?"},
                       {"from": "gpt", "value": "No, it is on the right side."}]},
    {"id": "text_only", "conversations": [{"from": "human", "value": "Write a haiku about rain."},
                                          {"from": "gpt", "value": "Soft rain on the roof,\nthe garden drinks "
                                                                   "silently,\nclouds drift far away."}]},
    {"id": "text_only_multi", "conversations": [{"from": "human", "value": "What is 2 + 2?"},
                                                {"from": "gpt", "value": "4."},
                                                {"from": "human", "value": "And times 3?"},
                                                {"from": "gpt", "value": "12."}]},
    {"id": "leading_answer", "image": "a.png",
     "conversations": [{"from": "gpt", "value": "This turn is dropped."},
                       {"from": "human", "value": "<image>\nDescribe the scene briefly."},
                       {"from": "gpt", "value": "A street at night, with wet asphalt reflecting the lights."}]},
    {"id": "options", "image": "a.png",
     "conversations": [{"from": "human", "value": "<image>\nWhat is the dog doing?\nA. sleeping\nB. running\n"
                                                   "Answer with the option's letter from the given choices "
                                                   "directly."},
                       {"from": "gpt", "value": "B"}]},
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sp-model", required=True)
    ap.add_argument("--out", default=str(Path(__file__).with_name("pack.json")))
    args = ap.parse_args()

    import llava
    import transformers
    from llava import conversation as conversation_lib
    from llava.constants import IGNORE_INDEX
    from llava.train import train as llava_train

    conversation_lib.default_conversation = conversation_lib.conv_templates["v1"]
    tok = transformers.LlamaTokenizer(vocab_file=args.sp_model, legacy=False, model_max_length=2048,
                                      padding_side="right")
    tok.pad_token = tok.unk_token  # LLaVA-1.5 (train.py, version v1)

    class DataArgs:  # what preprocess_multimodal reads
        is_multimodal = True
        mm_use_im_start_end = False

    out = []
    for rec in RECORDS:
        has_image = "image" in rec
        sources = [copy.deepcopy(rec["conversations"])]
        if has_image:
            sources = llava_train.preprocess_multimodal(sources, DataArgs())
        # the rendered text, by the same code path preprocess_v1 uses
        conv = conversation_lib.default_conversation.copy()
        roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
        src = sources[0]
        if roles[src[0]["from"]] != conv.roles[0]:
            src = src[1:]
        conv.messages = []
        for s in src:
            conv.append_message(roles[s["from"]], s["value"])
        text = conv.get_prompt()
        res = llava_train.preprocess(copy.deepcopy(sources), tok, has_image=has_image)
        ids, labels = res["input_ids"][0].tolist(), res["labels"][0].tolist()
        sup = [i for i, v in enumerate(labels) if v != IGNORE_INDEX]
        assert sup, f"{rec['id']}: preprocess_v1 reported a tokenization mismatch (all labels ignored)"
        runs, cur = [], [sup[0]]
        for i in sup[1:]:
            if i == cur[-1] + 1:
                cur.append(i)
            else:
                runs.append(cur)
                cur = [i]
        runs.append(cur)
        spans, pos = [], 0
        for run in runs:
            piece = tok.decode([ids[i] for i in run], skip_special_tokens=False)
            at = text.find(piece, pos)
            assert at >= 0, f"{rec['id']}: supervised text {piece!r} not found in the prompt"
            spans.append([at, at + len(piece)])
            pos = at + len(piece)
        out.append({"id": rec["id"], "record": rec, "text": text, "supervised_spans": spans,
                    "supervised_text": [text[a:b] for a, b in spans]})
    meta = {"generator": "tests/data/llava_preprocess/make_pack.py",
            "llava_torch": getattr(llava, "__version__", "1.2.2.post1"), "transformers": transformers.__version__,
            "conversation": "conv_templates['v1'] (conv_vicuna_v1)", "system": conversation_lib.conv_templates["v1"].system,
            "tokenizer": "LlamaTokenizer(legacy=False) on mistral_common data/tokenizer.model.v1"}
    Path(args.out).write_text(json.dumps({"meta": meta, "records": out}, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}: {len(out)} records")


if __name__ == "__main__":
    main()
