"""Task labels outside the 665K layout (issue 13 item 2): ScienceQA, Vision-Flan, DataOptim, data_source fields are
recognised; an unknown layout is said so (pool stats, manifest) and task-aware selection asks for labels."""

from __future__ import annotations

import json
from pathlib import Path

from vlselect.pool import open_pool, pool_stats
from cli_run import run


def conv(q="<image>\nWhat is shown?", a="A thing."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def write(path: Path, recs) -> Path:
    path.write_text(json.dumps(recs))
    return path




# LLaVA's ScienceQA file (scripts/convert_sqa_to_llava.py): image rows '{id}/image.png' (some copies prefix the split
# folder), text-only questions in the same file
SQA = [
    {"id": "12", "image": "12/image.png", "conversations": conv("<image>\nContext: x\nWhich is a mammal?\nA. cat", "A")},
    {"id": "13", "conversations": conv("Context: none\nWhich word is a noun?\nA. run\nB. dog", "B")},
    {"id": "5071", "image": "train/5071/image.png", "conversations": conv()},
    {"id": "6002", "image": "6002/image.png", "conversations": conv()},
]


def test_scienceqa_layout_is_one_task_not_folder_numbers(tmp_path):
    pool = open_pool(write(tmp_path / "llava_train_QCM-LEA.json", SQA))
    assert list(pool.tasks) == ["scienceqa"] * 4  # before: '12', 'sharegpt', 'train', '6002'
    assert pool.task_layout == "scienceqa" and pool.task_source == {"scienceqa": 4}
    assert "task_note" not in pool_stats(pool)


def test_known_layouts(tmp_path):
    mix = [{"id": "1", "image": "coco/train2017/1.jpg", "conversations": conv()},
           {"id": "2", "conversations": conv("hi", "ho")},
           {"id": "3", "image": "gqa/images/3.jpg", "conversations": conv()},
           {"id": "4", "image": "sam/images/4.jpg", "conversations": conv()}]
    pool = open_pool(write(tmp_path / "mix.json", mix))
    assert list(pool.tasks) == ["llava", "sharegpt", "gqa", "sam"] and pool.task_layout == "llava665k"
    vf = [{"id": f"v{i}", "image": f"images/{i}.jpg", "task_name": t, "conversations": conv()}
          for i, t in enumerate(["VQA-E+image_qa", "CLEVR+count"])]
    pool = open_pool(write(tmp_path / "vf.json", vf))
    assert list(pool.tasks) == ["VQA-E+image_qa", "CLEVR+count"] and pool.task_layout == "vision-flan"
    # Cambrian-7M / LLaVA-OneVision-style: the source dataset in a field
    cam = [{"id": "c1", "image": "0001/a.jpg", "source": "chartqa_28k", "conversations": conv()},
           {"id": "c2", "data_source": "sharegpt4v", "image": "x/b.jpg", "conversations": conv()},
           {"id": "c3", "source": "lima", "conversations": conv("hi", "ho")}]
    pool = open_pool(write(tmp_path / "cam.json", cam))
    assert list(pool.tasks) == ["chartqa_28k", "sharegpt4v", "lima"] and pool.task_layout == "data_source"
    d = tmp_path / "data"
    d.mkdir()
    write(d / "vqav2.json", [{"id": "vqav2_0", "image": "a/1.jpg", "conversations": conv()}])
    write(d / "sharegpt4v.json", [{"id": "sharegpt4v_0", "image": "b/2.jpg", "conversations": conv()}])
    pool = open_pool(d)
    assert sorted(pool.tasks) == ["sharegpt4v", "vqav2"] and pool.task_layout == "dataoptim"


UNKNOWN = [{"id": "u1", "image": "0042/photo.jpg", "conversations": conv()},
           {"id": "u2", "image": "0043/photo.jpg", "conversations": conv()},
           {"id": "u3", "conversations": conv("hi", "ho")},
           {"id": "u4", "image": "gqa/1.jpg", "conversations": conv()}]


def test_unknown_layout_is_said_not_guessed(tmp_path, capsys):
    p = write(tmp_path / "mine.json", [dict(r, kind=k) for r, k in zip(UNKNOWN, ["a", "b", "a", "c"])])
    pool = open_pool(p)
    assert list(pool.tasks) == ["unknown", "unknown", "unknown", "gqa"]  # before: '0042', '0043', 'sharegpt', 'gqa'
    assert pool.task_layout == "unknown"
    st = pool_stats(pool)
    assert st["task_layout"] == "unknown" and "3 of 4 records" in st["task_note"] and "--task-field" in st["task_note"]
    code, out, _ = run(["pool", "stats", str(p)], capsys)
    flat = " ".join(out.split())
    assert code == 0 and "task layout unknown" in flat and "--task-field FIELD" in flat
    assert "task layout: unknown" in flat
    code, out, _ = run(["pool", "stats", str(p), "--task-field", "kind", "--json"], capsys)
    st = json.loads(out)
    assert code == 0 and st["task_layout"] == "task_field" and "task_note" not in st
    assert [t["task"] for t in st["tasks"]] == ["a", "b", "c"]


def test_selection_manifest_and_task_aware_methods(tmp_path, capsys):
    p = write(tmp_path / "mine.json", UNKNOWN)
    code, _, err = run(["select", "random", "--pool", str(p), "--budget", "2", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    man = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert man["pool"]["task_layout"] == "unknown" and "--tasks" in man["pool"]["task_note"]
    code, _, err = run(["select", "random_stratified", "--pool", str(p), "--budget", "2", "--out",
                        str(tmp_path / "s")], capsys)
    assert code == 2 and "random_stratified needs task labels" in err and "--task-field" in err
    assert not (tmp_path / "s" / "manifest.json").exists()
    known = write(tmp_path / "sqa.json", SQA)
    code, _, err = run(["select", "random_stratified", "--pool", str(known), "--budget", "2", "--out",
                        str(tmp_path / "k")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "k" / "manifest.json").read_text())["pool"]["task_layout"] == "scienceqa"
