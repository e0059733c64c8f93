"""Every pool-reading command: the option an error suggests is one that command accepts, an empty pool exits 2,
a world folder is refused with the file to pass, and images are found next to the pool without --images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import typer
from fixtures_models import tiny_llava, write_pool  # noqa: F401

from vlselect.cli import app
from cli_run import run




def _commands(cmd, path=()):
    if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
        if cmd.callback is not None and path:  # `vlselect train` runs without a subcommand
            yield path, cmd
        for name, sub in cmd.commands.items():
            yield from _commands(sub, path + (name,))
    else:
        yield path, cmd


def _reads_pool(path, cmd) -> bool:
    names = {p.name for p in cmd.params}
    return "pool" in names or (path[0] == "pool" and "file" in names)


def _argv(path, pool: Path, tmp: Path) -> list:
    """A command line for each pool-reading command; the model does not exist, so a run that gets past the pool
    stops at the model (exit 2 with a different message)."""
    model = tmp / "no-model"
    (tmp / "ids.txt").write_text("0\n")
    lines = {
        ("pool", "stats"): ["pool", "stats", pool],
        ("pool", "check"): ["pool", "check", pool],
        ("pool", "subset"): ["pool", "subset", pool, "--ids", tmp / "ids.txt", "--out", tmp / "sub.json"],
        ("pool", "tasks"): ["pool", "tasks", pool, "--out", tmp / "tasks.json"],
        ("features", "activations"): ["features", "activations", "--model", model, "--pool", pool, "--out", tmp / "a"],
        ("features", "gradients"): ["features", "gradients", "--model", model, "--pool", pool, "--out", tmp / "g"],
        ("train", "warmup"): ["train", "warmup", "--model", model, "--pool", pool, "--out", tmp / "w"],
        ("train",): ["train", "--model", model, "--pool", pool, "--out", tmp / "t"],
        ("select",): ["select", "random", "--pool", pool, "--budget", "1", "--out", tmp / "s"],
    }
    return lines[path]


POOL_COMMANDS = [p for p, c in _commands(typer.main.get_command(app)) if _reads_pool(p, c)]


def test_every_pool_reading_command_is_covered():
    assert sorted(POOL_COMMANDS) == sorted([("pool", "stats"), ("pool", "check"), ("pool", "subset"),
                                            ("pool", "tasks"), ("features", "activations"),
                                            ("features", "gradients"), ("train", "warmup"), ("train",),
                                            ("select",)])


def _records(bad: str) -> list:
    good = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
            for i in range(3)]
    if bad == "no-conversations":
        return good + [{"id": "x"}]
    return good + [dict(good[0])]  # a repeated id


@pytest.mark.parametrize("bad,message", [("no-conversations", "conversations"), ("duplicate", "repeat")])
@pytest.mark.parametrize("path", POOL_COMMANDS, ids=lambda p: "-".join(p))
def test_suggested_option_is_accepted(tmp_path, capsys, path, bad, message):
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(_records(bad)))
    code, _, err = run(_argv(path, pool, tmp_path), capsys)
    assert code == 2 and str(pool) in err and message in err.lower(), err
    suggested = re.findall(r"pass (--[a-z-]+)", err)
    assert suggested, err
    code, _, err2 = run(_argv(path, pool, tmp_path) + [suggested[0]], capsys)
    assert "No such option" not in err2, err2
    first = err.split("error:", 1)[1].strip()[:80]
    assert first not in err2, err2  # got past the bad record (to the missing model, or a later check)
    if path[0] == "pool" and path[1] in ("stats", "tasks"):
        assert code == 0, err2


@pytest.mark.parametrize("path", POOL_COMMANDS, ids=lambda p: "-".join(p))
def test_empty_pool_exits_2(tmp_path, capsys, path):
    pool = tmp_path / "pool.json"
    pool.write_text("[]")
    code, out, err = run(_argv(path, pool, tmp_path), capsys)
    assert code == 2 and f"{pool}: it holds no records" in err, (out, err)


def test_all_records_skipped_is_an_empty_pool(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a"}\n{"id": "b"}\n')
    code, _, err = run(["pool", "stats", pool, "--skip-invalid"], capsys)
    assert code == 2 and "all 2 records were skipped as invalid" in err


def test_world_folder_is_refused_with_the_file_to_pass(tmp_path, capsys):
    pool, _ = write_pool(tmp_path / "world", n=3)
    (tmp_path / "world" / "world.json").write_text('{\n "seed": 0\n}\n')
    code, _, err = run(["pool", "stats", tmp_path / "world"], capsys)
    assert code == 2 and f"pass that file ({pool})" in err
    code, out, _ = run(["pool", "stats", pool, "--json"], capsys)
    assert code == 0 and json.loads(out)["records"] == 3


def test_dataoptim_directory_says_which_files_it_read(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    for name in ("vqav2", "gqa"):
        (d / f"{name}.json").write_text(json.dumps(
            [{"id": f"{name}_0", "image": "a.jpg",
              "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]))
    code, out, _ = run(["pool", "stats", d], capsys)
    assert code == 0 and "read 2 files: gqa.json, vqav2.json" in out


def test_activations_find_images_next_to_the_pool(tmp_path, tiny_llava, capsys):  # noqa: F811
    """The `world make` layout (pool.json beside images/): no --images gives the same store as --images."""
    pool, images = write_pool(tmp_path / "w", n=4)
    common = ["features", "activations", "--model", tiny_llava, "--pool", pool, "--quiet", "--batch-size", "2"]
    assert run(common + ["--out", tmp_path / "a", "--images", images], capsys)[0] == 0
    code, _, err = run(common + ["--out", tmp_path / "b"], capsys)
    assert code == 0, err
    a, b = (np.load(tmp_path / d / "activations.npy") for d in ("a", "b"))
    assert a.shape[0] == 4 and np.array_equal(a, b)
