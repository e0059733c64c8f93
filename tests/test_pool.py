"""The pool layer's Python API: reading, task inference, round trips, DataOptim ids, manifest, stats, memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from vlselect.errors import PoolError
from vlselect.pool import (
    Sample,
    dataoptim_task,
    infer_llava665k_task,
    open_pool,
    pool_stats,
    read_dataoptim_ids,
    read_task_labels,
    write_dataoptim_ids,
    write_llava_subset,
    write_manifest,
)

SHORT = "Answer the question using a single word or phrase."
MC = "Answer with the option's letter from the given choices directly."


def conv(q: str, a: str, *more: str) -> list[dict]:
    turns = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    for k, text in enumerate(more):
        turns.append({"from": "human" if k % 2 == 0 else "gpt", "value": text})
    return turns


# Hand-made records shaped like llava_v1_5_mix665k.json (specs/dataoptim.md §11.3-11.4) with the expected source.
MIX665K = [
    ({"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
      "conversations": conv("<image>\nWhat are the colors of the bus in the image?", "White and red.",
                            "What feature can be seen on the back of the bus?", "An advertisement.")}, "llava"),
    ({"id": "i6IyJda_0", "model": "", "conversations": conv("Write a haiku about {braces} and \"quotes\"", "ok")},
     "sharegpt"),
    ({"id": "000000000009", "image": "coco/train2017/000000000009.jpg",
      "conversations": conv(f"<image>\nWhat is on the plate?\n{SHORT}", "Food", f"Is it hot?\n{SHORT}", "No")},
     "vqav2"),
    ({"id": 2327515, "image": "gqa/images/2327515.jpg", "conversations": conv(f"<image>\nWho wears a shirt?\n{SHORT}",
                                                                              "Player")}, "gqa"),
    ({"id": "140031996X", "image": "ocr_vqa/images/140031996X.jpg",
      "conversations": conv(f"<image>\nWho is the author of this book?\n{SHORT}", "Nora Roberts")}, "ocrvqa"),
    ({"id": "0003c1f9a7e5a4a8", "image": "textvqa/train_images/0003c1f9a7e5a4a8.jpg",
      "conversations": conv("<image>\nProvide a one-sentence caption for the provided image.", "A sign.")},
     "textcaps"),
    ({"id": "vg_1", "image": "vg/VG_100K/1.jpg", "conversations": conv(
        "<image>\nPlease provide a short description for this region: [0.1, 0.2, 0.3, 0.4]", "A tree.")}, "vg"),
    ({"id": "000000000025", "image": "coco/train2017/000000000025.jpg", "conversations": conv(
        f"<image>\nWhat is the animal eating?\nA. grass\nB. leaves\nC. meat\nD. fish\n{MC}", "B")}, "aokvqa"),
    ({"id": "000000000030", "image": "coco/train2017/000000000030.jpg", "conversations": conv(
        "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: man left.",
        "[0.1, 0.2, 0.5, 0.9]")}, "refcoco"),
    ({"id": "000000000031", "image": "coco/train2017/000000000031.jpg", "conversations": conv(
        "<image>\nPlease provide a short description for this region: [0.1, 0.2, 0.5, 0.9]", "a man")}, "refcoco"),
    ({"id": "sa_1", "image": "sam/images/sa_1.jpg", "conversations": conv("<image>\nDescribe.", "A cat.")}, "sam"),
]  # fmt: skip


def write_json(path: Path, records: list, indent: int | None = 4) -> Path:
    path.write_text(json.dumps(records, indent=indent, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- task inference


def test_llava665k_task_inference(tmp_path):
    records = [r for r, _ in MIX665K]
    pool = open_pool(write_json(tmp_path / "mix.json", records))
    assert pool.format == "json"
    assert list(pool.tasks) == [t for _, t in MIX665K]
    assert pool.task_names[:4] == ["llava", "sharegpt", "vqav2", "gqa"]  # first-appearance order
    assert pool.task_source == {"llava665k": len(MIX665K)}
    # integer ids are strings in the pool, the record keeps the int
    assert pool.ids[3] == "2327515" and pool[3].record["id"] == 2327515
    assert infer_llava665k_task(["./coco/x.jpg"], "no marker") == "llava"
    assert infer_llava665k_task(["picture.png"], "") == "images"


def test_task_precedence_and_task_field(tmp_path):
    recs = [
        {"id": "a", "image": "gqa/1.jpg", "task": "counting", "dataset": "D1", "conversations": conv("q", "a")},
        {"id": "b", "image": "gqa/2.jpg", "task_name": "VQA-E+image_qa", "dataset": "D2",
         "conversations": conv("q", "a")},
        {"id": "llava_v1.5_7", "image": "gqa/3.jpg", "dataset": "D3", "conversations": conv("q", "a")},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "p.jsonl", recs)
    pool = open_pool(path, fmt="jsonl")
    assert list(pool.tasks) == ["counting", "VQA-E+image_qa", "gqa"]  # no DataOptim id rule outside dataoptim
    assert pool.task_source == {"task": 1, "task_name": 1, "llava665k": 1}
    pool = open_pool(path, task_field="dataset")
    assert list(pool.tasks) == ["D1", "D2", "D3"]
    bad = write_jsonl(tmp_path / "q.jsonl", recs + [{"id": "z", "conversations": conv("q", "a")}])
    with pytest.raises(PoolError, match=r"q\.jsonl: line 4 id 'z'.*no 'dataset' field"):
        open_pool(bad, task_field="dataset")


def test_vision_flan_detected_and_task_names(tmp_path):
    recs = [
        {"id": "VQA-E+image_question_answer_explanation", "task_name": "VQA-E+image_question_answer_explanation",
         "image": f"VQA-E+image_question_answer_explanation/{k}.jpg",
         "conversations": conv(f"<image>\nQuestion {k}? Options: (a) yes (b) no", "(a) yes")}
        for k in range(3)
    ] + [{"id": "GTSRB+image_classification", "task_name": "GTSRB+image_classification", "image": "GTSRB/1.jpg",
          "conversations": conv("<image>\nWhich sign?", "stop")}]  # fmt: skip
    path = write_json(tmp_path / "annotation_191-task_1k.json", recs)
    with pytest.raises(PoolError, match=r"occur more than once.*Vision-Flan annotation ids are known to repeat.*"
                       r"'VQA-E\+image_question_answer_explanation' at rows 0, 1, 2.*--unique-ids"):  # fmt: skip
        open_pool(path)
    pool = open_pool(path, unique_ids=True)
    assert pool.format == "vision-flan"
    assert list(pool.tasks) == ["VQA-E+image_question_answer_explanation"] * 3 + ["GTSRB+image_classification"]
    assert pool.renamed == 2
    assert pool.ids[:3] == ["VQA-E+image_question_answer_explanation", "VQA-E+image_question_answer_explanation#1",
                            "VQA-E+image_question_answer_explanation#2"]  # fmt: skip
    assert pool.original_id(1) == "VQA-E+image_question_answer_explanation"
    # the records themselves are unchanged, and the made-up ids cannot go into a DataOptim id list
    assert pool.record(1)["id"] == "VQA-E+image_question_answer_explanation"
    with pytest.raises(PoolError, match="made up by --unique-ids"):
        write_dataoptim_ids(pool, [1], tmp_path / "ids.txt")


def test_dataoptim_id_rule_handles_underscores():
    assert dataoptim_task("llava_v1.5_7") == "llava_v1.5"  # the official split('_')[0] would say 'llava'
    assert dataoptim_task("svit_conversation_0") == "svit"
    assert dataoptim_task("gqa_05145757") == "gqa"
    assert dataoptim_task("coco") is None and dataoptim_task("000000033471") is None


# ----------------------------------------------------------------------------------------- DataOptim

DATAOPTIM_FILES = {
    "coco": [{"id": "coco_0", "image": "coco/COCO_train2014_000000318556.jpg",
              "conversations": conv("<image>\nBriefly describe the content of the image.",
                                    "A very clean and well decorated empty bathroom")}],
    "gqa": [{"id": "gqa_05145757", "image": "visual_genome/2327022.jpg", "conversations": conv(
        "<image>\nWho wears a shirt? Answer the question directly with a short sentence or phrase.",
        "The player wears a shirt.")}],
    "llava": [{"id": f"llava_{k}", "image": "coco/COCO_train2014_000000000001.jpg",
               "conversations": conv("How?\n<image>", "Like this.")} for k in range(2)],
    "llava_v1.5": [{"id": f"llava_v1.5_{k}", "image": "coco_2017/000000274591.jpg",
                    "conversations": conv("<image>\nHi", "Hello")} for k in range(2)],
    "svit": [{"id": "svit_referring_0", "image": "visual_genome/1.jpg",
              "conversations": conv("<image>\nWhere is the clock [0.526, 0.152, 0.625, 0.717]?", "Top.")}],
}  # fmt: skip


def make_dataoptim(root: Path) -> Path:
    root.mkdir()
    for stem, recs in DATAOPTIM_FILES.items():
        write_json(root / f"{stem}.json", recs)
    return root


def test_dataoptim_directory_global_index_and_id_list(tmp_path):
    pool = open_pool(make_dataoptim(tmp_path / "data"))
    assert pool.format == "dataoptim" and len(pool) == 7
    assert list(pool.tasks) == ["coco", "gqa", "llava", "llava", "llava_v1.5", "llava_v1.5", "svit"]
    assert pool.task_source == {"dataoptim_file": 7}
    ids_file = tmp_path / "submission.txt"
    ids_file.write_text("llava_v1.5_1\ngqa_05145757\nllava_1\nllava_v1.5_1\n")
    rows = pool.indices_of(read_dataoptim_ids(ids_file), source=ids_file)
    assert rows.tolist() == [5, 1, 3, 5]
    out = write_llava_subset(pool, rows, tmp_path / "train.json")
    got = json.loads(out.read_text())
    assert [r["id"] for r in got] == ["llava_v1.5_1", "gqa_05145757", "llava_1", "llava_v1.5_1"]
    assert got[1] == DATAOPTIM_FILES["gqa"][0]
    # the id list writer: one id per line, leading zeros kept, repeats kept, in order
    write_dataoptim_ids(pool, [1, 0, 6, 1], tmp_path / "ids.txt")
    assert (tmp_path / "ids.txt").read_bytes() == b"gqa_05145757\ncoco_0\nsvit_referring_0\ngqa_05145757\n"
    assert read_dataoptim_ids(tmp_path / "ids.txt") == ["gqa_05145757", "coco_0", "svit_referring_0", "gqa_05145757"]
    ids_file.write_text("coco_0\nllava_v1.5_9\nnope_1\n")
    with pytest.raises(PoolError, match=r"submission\.txt: 2 id\(s\) are not in the pool.*'llava_v1\.5_9' \(line 2\)"
                       r", 'nope_1' \(line 3\)"):  # fmt: skip
        pool.indices_of(read_dataoptim_ids(ids_file), source=ids_file)
    ids_file.write_text("coco_0\n\nllava_1\n")
    with pytest.raises(PoolError, match=r"line 2 is empty"):
        read_dataoptim_ids(ids_file)


def test_dataoptim_single_file_uses_longest_stem(tmp_path):
    recs = DATAOPTIM_FILES["llava"] + DATAOPTIM_FILES["llava_v1.5"] + DATAOPTIM_FILES["svit"]
    pool = open_pool(write_json(tmp_path / "byod.json", recs))
    assert pool.format == "dataoptim"
    assert list(pool.tasks) == ["llava", "llava", "llava_v1.5", "llava_v1.5", "svit"]


def test_dataoptim_duplicate_across_files(tmp_path):
    root = make_dataoptim(tmp_path / "data")
    write_json(root / "zz.json", [dict(DATAOPTIM_FILES["coco"][0])])
    with pytest.raises(PoolError, match=r"1 id\(s\) occur more than once.*'coco_0' at rows 0, 7"):
        open_pool(root)


# ----------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("indent", [4, None])
def test_round_trip_json_byte_exact(tmp_path, indent):
    records = [r for r, _ in MIX665K]
    src = write_json(tmp_path / "mix.json", records, indent=indent)
    pool = open_pool(src)
    # all rows in order reproduce the file byte for byte
    full = write_llava_subset(pool, np.arange(len(pool)), tmp_path / "full.json")
    assert full.read_bytes() == src.read_bytes()
    # a subset: same records (fields, order, int ids), same bytes per record
    idx = [7, 0, 3, 3]
    sub = write_llava_subset(pool, idx, tmp_path / "sub.json")
    again = open_pool(sub, unique_ids=True)
    assert [again.raw_record(k) for k in range(4)] == [pool.raw_record(i) for i in idx]
    loaded = json.loads(sub.read_text())
    assert loaded == [records[i] for i in idx]
    assert [list(r) for r in loaded] == [list(records[i]) for i in idx]  # key order kept
    assert list(again.tasks) == [MIX665K[i][1] for i in idx]
    assert again.renamed == 1 and again.ids[3] == "2327515#3"


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_json_scanner_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    """Records split across read chunks, strings with braces, brackets, escaped quotes and backslashes, non-ASCII."""
    import vlselect.pool.core as core

    tricky = {"id": "t\u00e9", "image": "sam/x.jpg", "meta": {"list": [1, [2, {"a": "]}"}]], "s": "\\"},
              "conversations": conv('He said "}]{[" and C:\\path\\', "日本語 ✓ \\\"quoted\\\"")}  # fmt: skip
    deep = {"id": "deep", "x": [[[[[[["}"]]]]]]], "conversations": conv("q", "a")}  # deeper than the fast regex
    records = [r for r, _ in MIX665K] + [deep, tricky]
    assert core._RECORD is None or core._RECORD.match(json.dumps(deep).encode()) is None
    src = write_json(tmp_path / "t.json", records, indent=2)
    ref = open_pool(src)
    monkeypatch.setattr(core, "_CHUNK", chunk)
    pool = open_pool(src)
    assert [pool.location(i) for i in range(len(pool))] == [ref.location(i) for i in range(len(ref))]
    assert [pool.record(i) for i in range(len(pool))] == records
    assert pool.ids[-1] == "té" and pool.fingerprint == ref.fingerprint
    assert write_llava_subset(pool, range(len(pool)), tmp_path / "o.json").read_bytes() == src.read_bytes()


def test_round_trip_jsonl_and_fingerprint(tmp_path):
    records = [r for r, _ in MIX665K]
    pj = open_pool(write_json(tmp_path / "a.json", records))
    pl = open_pool(write_jsonl(tmp_path / "a.jsonl", records))
    assert pl.format == "jsonl"
    # the fingerprint depends on ids and content, not on formatting, and is pinned across runs and machines
    assert pj.fingerprint == pl.fingerprint
    assert len(pj.fingerprint) == 64 and int(pj.fingerprint, 16) >= 0
    changed = [dict(r) for r in records]
    changed[2] = {**changed[2], "conversations": conv("x", "y")}
    assert open_pool(write_jsonl(tmp_path / "b.jsonl", changed)).fingerprint != pl.fingerprint
    assert open_pool(write_jsonl(tmp_path / "c.jsonl", records[::-1])).fingerprint != pl.fingerprint
    out = write_llava_subset(pl, [1, 2], tmp_path / "s.json")
    assert json.loads(out.read_text()) == records[1:3]
    assert out.read_bytes() == b"[\n" + pl.raw_record(1) + b",\n" + pl.raw_record(2) + b"\n]\n"
    out2 = write_llava_subset(pj, [1, 2], tmp_path / "s.jsonl", fmt="jsonl")
    assert [json.loads(x) for x in out2.read_text().splitlines()] == records[1:3]
    assert write_llava_subset(pl, [], tmp_path / "empty.json").read_text() == "[]\n"


def test_fingerprint_pinned(tmp_path):
    recs = [{"id": "a", "conversations": conv("q", "a")}, {"id": 2, "image": "x/1.png", "conversations": conv("q", "b")}]
    fp = open_pool(write_jsonl(tmp_path / "p.jsonl", recs)).fingerprint
    assert fp == open_pool(write_json(tmp_path / "p.json", recs)).fingerprint
    # the documented definition: sha256(version, n, sha256(ids), sha256(key-sorted canonical records))
    import hashlib

    ids = hashlib.sha256(b"a\n2\n").digest()
    content = hashlib.sha256(b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n" for r in recs)).digest()
    want = hashlib.sha256(b"vlselect-pool-fingerprint-v1\n2\n" + ids + content).hexdigest()
    assert fp == want == "0a2d92fdb1f57ac6b0f7c362b3f54f132ea0720a9e47b2ee5aef896643eb316f"


def test_sample_fields_and_roles(tmp_path):
    rec = {"id": "x", "images": ["a/1.png", "a/2.png"], "extra": {"k": [1, 2]},
           "conversations": [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "<image>\nHi"},
                             {"from": "assistant", "value": "Hello there"}]}  # fmt: skip
    pool = open_pool(write_jsonl(tmp_path / "p.jsonl", [rec]), image_root=tmp_path / "imgs")
    s = pool[0]
    assert isinstance(s, Sample) and s.id == "x" and s.images == ["a/1.png", "a/2.png"] and s.has_image
    assert [t["from"] for t in s.conversations] == ["system", "human", "gpt"]
    assert s.record == rec and s.task == "unknown" and pool.task_layout == "unknown"  # folder 'a' is no task
    assert pool.image_paths(0) == [tmp_path / "imgs" / "a/1.png", tmp_path / "imgs" / "a/2.png"]
    assert [x.id for x in pool] == ["x"] and pool[-1].id == "x"
    with pytest.raises(IndexError):
        pool[1]


def test_pickle_and_stale_file(tmp_path):
    import pickle

    records = [r for r, _ in MIX665K]
    src = write_json(tmp_path / "mix.json", records)
    pool = open_pool(src)
    assert pool[2].id == "000000000009"  # opens a file descriptor
    clone = pickle.loads(pickle.dumps(pool))
    assert clone.ids == pool.ids and clone.fingerprint == pool.fingerprint and clone[5].record == records[5]
    assert clone.indices_of(["2327515"]).tolist() == [3]
    src.write_text(json.dumps(records[:3]))
    with pytest.raises(PoolError, match=r"mix\.json: changed on disk since the pool was read"):
        write_llava_subset(pool, [0], tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


# ----------------------------------------------------------------------------------------- errors (API level)


def test_errors_name_file_and_record(tmp_path):
    good = {"id": "g", "conversations": conv("q", "a")}
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(good | {"id": "h"}) + "\n{\"id\": \"x\", \"conv\n")
    with pytest.raises(PoolError, match=r"bad\.jsonl: line 3: malformed JSON"):
        open_pool(p)
    pool = open_pool(p, skip_invalid=True)
    assert len(pool) == 2 and pool.skipped == {"malformed_json": 1}
    assert pool.skipped_examples["malformed_json"][0].startswith(f"{p}: line 3")
    q = tmp_path / "bad.json"
    q.write_text('[{"id": "a", "conversations": [{"from": "human", "value": "q"}]},\n {"id": "b", "conversations": '
                 '[{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}]')  # fmt: skip
    at = q.read_bytes().index(b'{"id": "b"')
    with pytest.raises(PoolError, match=rf"bad\.json: record 1 \(0-based, at byte {at}\) id 'b': its turn 1 has "
                       r"unknown role 'from': 'bot'"):  # fmt: skip
        open_pool(q)
    with pytest.raises(PoolError, match=r"pool file not found: .*nope\.json"):
        open_pool(tmp_path / "nope.json")


def test_skip_invalid_counts_every_reason(tmp_path):
    lines = [
        json.dumps({"id": "ok", "conversations": conv("q", "a")}),
        json.dumps({"id": "noconv"}),
        json.dumps({"id": "role", "conversations": [{"from": "bot", "value": "x"}]}),
        "",
        "{broken",
        json.dumps([1, 2]),
        json.dumps({"id": "ok2", "conversations": conv("q", "a")}),
    ]
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join(lines) + "\n")
    pool = open_pool(p, skip_invalid=True)
    assert pool.ids == ["ok", "ok2"]
    assert pool.skipped == {"no_conversations": 1, "unknown_role": 1, "blank_line": 1, "malformed_json": 1,
                            "not_an_object": 1}  # fmt: skip
    assert pool_stats(pool)["skipped_total"] == 5
    assert pool.raw_record(1) == lines[6].encode()


# ----------------------------------------------------------------------------------------- stats


def test_stats_numbers(tmp_path):
    recs = [
        {"id": "1", "image": "coco/train2017/1.jpg", "conversations": conv("<image>\nWhat is this?", "A red cube",
                                                                            "And that?", "Blue")},
        {"id": "2", "image": "gqa/images/2.jpg", "conversations": conv(f"<image>\nColour?\n{SHORT}", "Red")},
        {"id": "3", "conversations": conv("Tell me a joke", "No")},
        {"id": "4", "image": "gqa/images/4.jpg", "conversations": conv("<image>\nShape?", "Cube")},
    ]  # fmt: skip
    st = pool_stats(open_pool(write_jsonl(tmp_path / "s.jsonl", recs)))
    assert st["records"] == 4
    assert st["tasks"] == [{"task": "gqa", "count": 2, "share": 0.5}, {"task": "llava", "count": 1, "share": 0.25},
                           {"task": "sharegpt", "count": 1, "share": 0.25}]  # fmt: skip
    assert st["text_only"] == {"count": 1, "share": 0.25}
    assert st["images"] == {"records_with_image": 3, "image_refs": 3}
    assert st["turns"] == {"min": 1, "median": 1.0, "p90": 1.7, "max": 2, "mean": 1.25}
    # words per record: the <image> placeholder is not a word; SHORT has 9 words
    words = [3 + 3 + 2 + 1, 1 + 9 + 1, 4 + 1, 1 + 1]
    assert st["words"]["min"] == min(words) and st["words"]["max"] == max(words)
    assert st["words"]["median"] == float(np.median(words))
    chars = [len("\nWhat is this?") + 10 + 9 + 4, len(f"\nColour?\n{SHORT}") + 3, 14 + 2, len("\nShape?") + 4]
    assert st["chars"]["min"] == min(chars) and st["chars"]["max"] == max(chars)
    assert st["chars"]["p90"] == round(float(np.percentile(chars, 90)), 3)
    assert st["skipped"] == {} and st["renamed_ids"] == 0


# ----------------------------------------------------------------------------------------- side files


def test_read_task_labels(tmp_path):
    p = tmp_path / "tasks.json"
    p.write_text('["a", "b", 3]')
    assert read_task_labels(p, 3).tolist() == ["a", "b", "3"]
    with pytest.raises(PoolError, match=r"tasks\.json: 3 labels for a pool of 4 rows"):
        read_task_labels(p, 4)
    p.write_text('["a", null]')
    with pytest.raises(PoolError, match=r"tasks\.json: label 1 is None"):
        read_task_labels(p)
    p.write_text('{"tasks": ["x", "y"]}')
    assert read_task_labels(p, 2).tolist() == ["x", "y"]
    p.write_text('{"a": 1}')
    with pytest.raises(PoolError, match="expected a JSON list"):
        read_task_labels(p)
    p.write_text('["a",')
    with pytest.raises(PoolError, match=r"tasks\.json: malformed JSON"):
        read_task_labels(p)
    with pytest.raises(PoolError, match="task-label file not found"):
        read_task_labels(tmp_path / "none.json")


def test_manifest(tmp_path):
    pool = open_pool(write_jsonl(tmp_path / "p.jsonl", [r for r, _ in MIX665K]))
    out = write_manifest(tmp_path / "run" / "manifest.json", pool=pool, method="coincide",
                         params={"K": 10000, "temp": np.float32(0.1), "layers": (3, 7)}, budget=0.2, seed=1234,
                         extra={"indices": np.array([1, 2])})  # fmt: skip
    m = orjson.loads(out.read_bytes())
    assert m["pool"]["fingerprint"] == pool.fingerprint and m["pool"]["rows"] == len(MIX665K)
    assert m["method"] == "coincide" and m["budget"] == 0.2 and m["seed"] == 1234
    assert m["params"] == {"K": 10000, "temp": pytest.approx(0.1), "layers": [3, 7]}
    assert m["extra"] == {"indices": [1, 2]}
    assert m["versions"]["numpy"] == np.__version__ and "torch" in m["versions"] and "faiss" in m["versions"]
    assert m["created_utc"].endswith("Z")
    assert [q.name for q in (tmp_path / "run").iterdir()] == ["manifest.json"]  # no temp file left


# ----------------------------------------------------------------------------------------- memory


def test_streaming_memory_is_bounded(tmp_path):
    """A 200k-line JSONL is read with a bounded index, not 200k dicts (one parsed dict of this record is ~1.5 KB of
    Python objects, ≥ 300 MB for all rows; the index is ~60 B a row). Measured as the growth of the peak RSS of a
    fresh interpreter while it opens the pool (tracemalloc would slow the scan down several times)."""
    n = 200_000
    p = tmp_path / "big.jsonl"
    line = ('{"id": "%d", "image": "coco/train2017/%012d.jpg", "conversations": [{"from": "human", "value": '
            '"<image>\\nWhat is in the picture number %d? Answer the question using a single word or phrase."}, '
            '{"from": "gpt", "value": "A thing with a fairly long answer to make the record realistic."}]}\n')  # fmt: skip
    with open(p, "w") as f:
        f.writelines(line % (i, i, i) for i in range(n))
    code = (
        "import resource, sys, json\n"
        "from vlselect.pool import open_pool, pool_stats\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "pool = open_pool(sys.argv[1])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "st = pool_stats(pool)\n"
        "print(json.dumps({'growth_kib': after - before, 'n': len(pool), 'last': pool.id(len(pool) - 1),"
        " 'tasks': st['tasks']}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["n"] == n and out["last"] == str(n - 1)
    assert out["tasks"] == [{"task": "vqav2", "count": n, "share": 1.0}]
    assert out["growth_kib"] < 48 * 1024, f"peak RSS grew by {out['growth_kib'] / 1024:.1f} MiB"
