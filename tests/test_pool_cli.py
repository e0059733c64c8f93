"""``vlselect pool`` through the real entry point: bad inputs exit 2 naming file and record, stats, check, subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cli_run import run




def conv(q: str = "<image>\nWhat is it?", a: str = "A cube.") -> list[dict]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def rec(i, **kw) -> dict:
    return {"id": str(i), "image": f"shapes/{i}.png", "conversations": conv(), **kw}


def jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


# ----------------------------------------------------------------------------------------- bad inputs → exit 2


def test_missing_file(tmp_path, capsys):
    code, _, err = run(["pool", "stats", str(tmp_path / "nope.json")], capsys)
    assert code == 2 and f"pool file not found: {tmp_path / 'nope.json'}" in err and "Traceback" not in err


def test_malformed_jsonl_names_line(tmp_path, capsys):
    p = jsonl(tmp_path / "p.jsonl", [rec(0), rec(1), '{"id": "2", "conversations": [}'])
    code, _, err = run(["pool", "stats", str(p)], capsys)
    assert code == 2 and f"{p}: line 3: malformed JSON" in err and "--skip-invalid" in err
    code, out, _ = run(["pool", "stats", str(p), "--skip-invalid", "--json"], capsys)
    st = json.loads(out)
    assert code == 0 and st["records"] == 2 and st["skipped"] == {"malformed_json": 1}
    assert st["skipped_examples"]["malformed_json"][0].startswith(f"{p}: line 3: malformed JSON")
    code, out, _ = run(["pool", "stats", str(p), "--skip-invalid"], capsys)
    assert code == 0 and "skipped records: 1 {'malformed_json': 1}" in out
    assert f"skipped (malformed_json): {p}: line 3: malformed JSON" in out


def test_malformed_json_array_names_record_and_byte(tmp_path, capsys):
    p = tmp_path / "p.json"
    text = json.dumps([rec(0), rec(1)], indent=2)
    bad = text.replace('"id": "1",', '"id": "1" "oops",')
    p.write_text(bad)
    at = bad.index('{\n    "id": "1"')
    code, _, err = run(["pool", "stats", str(p)], capsys)
    assert code == 2 and f"{p}: record 1 (0-based, at byte {at}): malformed JSON" in err
    # a missing comma between records, a trailing comma, a truncated file
    p.write_text(json.dumps([rec(0)]) [:-1] + " " + json.dumps(rec(1)) + "]")
    code, _, err = run(["pool", "stats", str(p)], capsys)
    assert code == 2 and f"{p}: record 1 (0-based, at byte" in err and "expected a ',' between records" in err
    p.write_text(json.dumps([rec(0)])[:-1] + ",]")
    code, _, err = run(["pool", "stats", str(p)], capsys)
    assert code == 2 and f"{p}: byte" in err and "before the closing ']'" in err
    p.write_text(text[: text.index('"id": "1"') + 12])
    code, _, err = run(["pool", "stats", str(p)], capsys)
    assert code == 2 and f"{p}: record 1 (0-based, at byte" in err and "the file ends inside this record" in err


def test_record_without_conversations(tmp_path, capsys):
    p = jsonl(tmp_path / "p.jsonl", [rec(0), {"id": "x7", "image": "a.png", "conversation": conv()}])
    code, _, err = run(["pool", "stats", str(p)], capsys)
    assert code == 2 and f"{p}: line 2 id 'x7': it has no 'conversations' key" in err
    p = tmp_path / "p.json"
    p.write_text(json.dumps([rec(0), rec(1), {"id": 42, "conversations": []}]))
    code, _, err = run(["pool", "stats", str(p)], capsys)
    assert code == 2 and f"{p}: record 2 (0-based, at byte" in err and "id '42': it has an empty or non-list" in err


def test_unknown_role(tmp_path, capsys):
    bad = rec(5, conversations=[{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}])
    p = jsonl(tmp_path / "p.jsonl", [rec(0), bad])
    code, _, err = run(["pool", "stats", str(p)], capsys)
    assert code == 2 and f"{p}: line 2 id '5': its turn 1 has unknown role 'from': 'bot'" in err
    assert "accepted: human, user, gpt, assistant, system" in err
    ok = rec(6, conversations=[{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}])
    code, out, _ = run(["pool", "stats", str(jsonl(tmp_path / "q.jsonl", [rec(0), ok])), "--json"], capsys)
    assert code == 0 and json.loads(out)["records"] == 2


def test_duplicate_ids(tmp_path, capsys):
    p = jsonl(tmp_path / "p.jsonl", [rec(0), rec(1), rec(0), rec(2), rec(1), rec(0)])
    code, _, err = run(["pool", "stats", str(p)], capsys)
    assert code == 2 and f"{p}: 2 id(s) occur more than once (3 repeats)" in err
    assert "'0' at rows 0, 2, 5" in err and "'1' at rows 1, 4" in err and "--unique-ids" in err
    code, out, _ = run(["pool", "stats", str(p), "--unique-ids", "--json"], capsys)
    st = json.loads(out)
    assert code == 0 and st["records"] == 6 and st["renamed_ids"] == 3


def test_missing_id_and_task_field(tmp_path, capsys):
    p = jsonl(tmp_path / "p.jsonl", [rec(0), {"image": "a.png", "conversations": conv()}])
    code, _, err = run(["pool", "stats", str(p)], capsys)
    assert code == 2 and f"{p}: line 2: the record has no 'id'" in err
    p = jsonl(tmp_path / "q.jsonl", [rec(0, dataset="vqa"), rec(1)])
    code, _, err = run(["pool", "stats", str(p), "--task-field", "dataset"], capsys)
    assert code == 2 and f"{p}: line 2 id '1': the record has no 'dataset' field" in err


def test_bad_format_option_and_not_a_pool(tmp_path, capsys):
    p = jsonl(tmp_path / "p.jsonl", [rec(0)])
    code, _, err = run(["pool", "stats", str(p), "--format", "parquet"], capsys)
    assert code == 2 and "unknown pool format 'parquet'" in err
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([rec(0), rec(1)], indent=2))
    code, _, err = run(["pool", "stats", str(arr), "--format", "jsonl"], capsys)
    assert code == 2 and f"{arr}: line 1 starts a JSON array" in err
    code, _, err = run(["pool", "stats", str(p), "--format", "json"], capsys)
    assert code == 2 and f"{p}: byte 0: expected '[' (a JSON array of records)" in err and "--format jsonl" in err
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps(rec(0), indent=2))
    code, _, err = run(["pool", "stats", str(obj)], capsys)
    assert code == 2 and f"{obj}: line 1 opens a JSON object that spans several lines" in err
    q = tmp_path / "notes.json"
    q.write_text("hello")
    code, _, err = run(["pool", "stats", str(q)], capsys)
    assert code == 2 and f"{q}: does not look like a pool" in err


# ----------------------------------------------------------------------------------------- stats


def test_stats_table_and_json(tmp_path, capsys):
    recs = [
        rec(0, image="coco/train2017/0.jpg"),
        rec(1, image="gqa/images/1.jpg", conversations=conv("<image>\nQ?\nAnswer the question using a single word "
                                                            "or phrase.", "Red")),
        {"id": "2", "conversations": conv("hello there", "hi")},
        rec(3, image="gqa/images/3.jpg"),
    ]  # fmt: skip
    p = tmp_path / "mix.json"
    p.write_text(json.dumps(recs, indent=4))
    code, out, _ = run(["pool", "stats", str(p), "--json"], capsys)
    st = json.loads(out)
    assert code == 0 and st["records"] == 4 and st["format"] == "json"
    assert [(t["task"], t["count"], t["share"]) for t in st["tasks"]] == [("gqa", 2, 0.5), ("llava", 1, 0.25),
                                                                          ("sharegpt", 1, 0.25)]  # fmt: skip
    assert st["text_only"] == {"count": 1, "share": 0.25}
    assert st["turns"]["max"] == 1 and st["words"]["min"] == 3 and st["words"]["max"] == 11  # "Q?" + 9 words + "Red"
    code, out, _ = run(["pool", "stats", str(p)], capsys)
    assert code == 0
    flat = " ".join(out.split())
    assert "gqa │ 2 │ 50.00%" in flat and "sharegpt │ 1 │ 25.00%" in flat and "text-only (no image) │ 1 │ 25.00%" in flat
    assert "turns (answers)" in flat and "4 records" in flat


# ----------------------------------------------------------------------------------------- check


def test_check_images(tmp_path, capsys):
    img = tmp_path / "imgs"
    (img / "shapes").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(img / "shapes" / "0.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(img / "shapes" / "1.png")
    (img / "shapes" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    recs = [rec(0), rec(1), rec(2), rec(3), {"id": "t", "conversations": conv("hi", "ho")}, rec(9, image="shapes/0.png")]
    p = tmp_path / "p.json"
    p.write_text(json.dumps(recs))
    code, out, _ = run(["pool", "check", str(p), "--images", str(img), "--json"], capsys)
    r = json.loads(out)
    assert code == 1
    assert (r["records"], r["records_with_image"], r["image_refs"], r["unique_images"]) == (6, 5, 5, 4)
    assert (r["missing"], r["unreadable"], r["records_with_problems"], r["ok"]) == (1, 1, 2, False)
    assert r["examples"]["missing"] == [{"row": 3, "id": "3", "path": "shapes/3.png"}]
    assert r["examples"]["unreadable"][0]["row"] == 2 and r["examples"]["unreadable"][0]["path"] == "shapes/2.png"
    code, out, _ = run(["pool", "check", str(p), "--images", str(img)], capsys)
    flat = " ".join(out.split())
    assert code == 1 and "missing 1 · unreadable 1" in flat and "missing: row 3 id '3': shapes/3.png" in flat
    good = tmp_path / "good.json"
    good.write_text(json.dumps([rec(0), rec(1)]))
    code, out, _ = run(["pool", "check", str(good), "--images", str(img)], capsys)
    assert code == 0 and "missing 0 · unreadable 0" in " ".join(out.split())
    code, _, err = run(["pool", "check", str(good), "--images", str(tmp_path / "none")], capsys)
    assert code == 2 and f"image folder not found: {tmp_path / 'none'}" in err
    # without --images: the pool's folder, or its images/ subfolder when the paths resolve only there
    (tmp_path / "images").symlink_to(img, target_is_directory=True)
    code, out, _ = run(["pool", "check", str(good), "--json"], capsys)
    assert code == 0 and json.loads(out)["image_root"] == str(tmp_path / "images")


# ----------------------------------------------------------------------------------------- subset and help


def test_subset_from_id_list(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "coco.json").write_text(json.dumps([rec("coco_0"), rec("coco_1")], indent=4))
    (root / "llava_v1.5.json").write_text(json.dumps([rec("llava_v1.5_0")], indent=4))
    ids = tmp_path / "ids.txt"
    ids.write_text("llava_v1.5_0\ncoco_1\n")
    out = tmp_path / "train.json"
    code, stdout, _ = run(["pool", "subset", str(root), "--ids", str(ids), "--out", str(out)], capsys)
    assert code == 0 and "wrote 2 records" in stdout
    assert [r["id"] for r in json.loads(out.read_text())] == ["llava_v1.5_0", "coco_1"]
    ids.write_text("coco_1\nllava_0\n")
    code, _, err = run(["pool", "subset", str(root), "--ids", str(ids), "--out", str(out)], capsys)
    assert code == 2 and f"{ids}: 1 id(s) are not in the pool" in err and "'llava_0' (line 2)" in err


def test_tasks_file(tmp_path, capsys):
    from vlselect.pool import read_task_labels

    recs = [rec(0, image="gqa/images/0.jpg"), {"id": "1", "conversations": conv("hi", "ho")}, rec(2, task="count")]
    p = jsonl(tmp_path / "p.jsonl", recs)
    out = tmp_path / "tasks.json"
    code, stdout, _ = run(["pool", "tasks", str(p), "-o", str(out)], capsys)
    assert code == 0 and "wrote 3 task labels (3 tasks)" in stdout
    assert read_task_labels(out, 3).tolist() == ["gqa", "sharegpt", "count"]


@pytest.mark.parametrize("cmd", [["pool"], ["pool", "stats"], ["pool", "check"], ["pool", "subset"], ["pool", "tasks"]])
def test_help_ends_with_example(cmd, capsys):
    code, out, _ = run([*cmd, "--help"], capsys)
    lines = out.splitlines()
    first_box = next(k for k, line in enumerate(lines) if line.lstrip().startswith("╭"))
    description = [line.strip() for line in lines[:first_box] if line.strip()]
    # the example is the last paragraph of the description, right before the arguments/options boxes
    assert code == 0 and any(line.startswith("Example: vlselect pool") for line in description[-2:])


def test_every_command_help_carries_an_example():
    """Issue 2: every command's --help has an example (groups included)."""
    from typer.main import get_command

    from vlselect.cli import app

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, path + [name])
        if path:
            yield " ".join(path), cmd

    missing = [p for p, c in walk(get_command(app), []) if "Example: vlselect" not in (c.help or "")]
    assert missing == []
