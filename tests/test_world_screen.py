"""``benchmarks/world_screen.py``: the bench on a world with other default shares or group sizes, and never on a
folder made with other ones."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench_scripts import load_script


@pytest.fixture
def screen(monkeypatch):
    import vlselect.cli
    import vlselect.world.build as build

    # the script changes the world's module defaults in place: give it copies, restored after the test
    monkeypatch.setattr(build, "DEFAULT_COMPOSITION", dict(build.DEFAULT_COMPOSITION))
    monkeypatch.setattr(build, "DEFAULT_REDUNDANCY", dict(build.DEFAULT_REDUNDANCY))
    calls = []

    def fake_main(argv):  # what the bench would build: the pool's OCR groups under the changed defaults
        records, _ = build.plan_pool(build.WorldConfig(size=4000, seed=3))
        groups = Counter(r.group for r in records if r.task == "ocr")
        tasks = Counter(r.task for r in records)
        calls.append({"argv": argv, "ocr_group_mean": len([r for r in records if r.task == "ocr"]) / len(groups),
                      "ocr_share": tasks["ocr"] / len(records)})

    monkeypatch.setattr(vlselect.cli, "main", fake_main)
    return load_script("world_screen"), calls


def test_the_overrides_reach_the_world_and_are_recorded(screen, tmp_path):
    ws, calls = screen
    out = tmp_path / "b"
    ws.main(["--redundancy", "ocr=8", "--composition", "ocr=0.12,text=0.07", "--", "--worlds", "0", "--out", str(out)])
    (call,) = calls
    assert call["argv"] == ["bench", "--worlds", "0", "--out", str(out)]
    # groups of k ~ uniform{1..15} have mean 8 (the shipped 4 gives ~4); 12% of 4,000 records are OCR
    assert 6.5 < call["ocr_group_mean"] < 9.5
    assert call["ocr_share"] == pytest.approx(0.12, abs=0.002)
    rec = json.loads((out / "world_overrides.json").read_text())
    assert rec["redundancy"]["ocr"] == 8 and rec["composition"]["ocr"] == 0.12 and rec["composition"]["text"] == 0.07
    # the same overrides again: the folder is the same bench's (resume), allowed
    ws.main(["--composition", "text=0.07,ocr=0.12", "--redundancy", "ocr=8", "--", "--out", str(out)])
    assert len(calls) == 2


def test_a_folder_of_other_defaults_is_refused(screen, tmp_path):
    ws, calls = screen
    out = tmp_path / "b"
    ws.main(["--redundancy", "ocr=8", "--", "--out", str(out)])
    with pytest.raises(SystemExit, match="other world overrides"):
        ws.main(["--redundancy", "ocr=6", "--", "--out", str(out)])
    plain = tmp_path / "plain"  # a bench folder of the shipped world (no record of overrides)
    (plain / "world-0").mkdir(parents=True)
    with pytest.raises(SystemExit, match="without world_screen.py's record"):
        ws.main(["--redundancy", "ocr=8", "--", "--out", str(plain)])
    assert len(calls) == 1


@pytest.mark.parametrize("args, message", [
    (["--redundancy", "ocr", "--", "--out", "x"], "is not task=number"),
    (["--redundancy", "ocr=0.5", "--", "--out", "x"], "mean group sizes must be >= 1"),
    (["--composition", "sound=0.1", "--", "--out", "x"], "unknown task 'sound'"),
    (["--redundancy", "ocr=8"], "after --"),
    (["--redundancy", "ocr=8", "--", "--worlds", "0"], "--out"),
])
def test_bad_arguments_say_what_to_fix(screen, args, message, tmp_path, monkeypatch):
    ws, calls = screen
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        ws.main(args)
    assert calls == [] and not (tmp_path / "x").exists()


def test_a_world_with_changed_defaults_has_its_own_cache_key(monkeypatch, tmp_path):
    """The bench's world stage is keyed by size and seed; a screen's changed shares or group sizes join the key, so
    a plain ``vlselect bench`` on a screen's folder (or the reverse) builds its own world instead of reusing one."""
    import vlselect.world.build as build
    from vlselect.bench.run import BenchConfig, make_worlds

    keys = []

    class Cache:  # records the recipes the bench asks its cache for, builds nothing
        def run(self, name, recipe, fn, **kw):
            keys.append((name, recipe))
            return tmp_path, None

    cfg = BenchConfig(size=100)
    make_worlds(Cache(), cfg)
    shipped = dict(keys)["world"]
    assert build.changed_defaults() == {} and set(shipped) == {"size", "seed", "eval_size", "image_size"}
    monkeypatch.setitem(build.DEFAULT_REDUNDANCY, "ocr", 8)
    keys.clear()
    make_worlds(Cache(), cfg)
    screened = dict(keys)["world"]
    assert screened != shipped and screened["redundancy"]["ocr"] == 8 and "composition" not in screened
    monkeypatch.setitem(build.DEFAULT_REDUNDANCY, "ocr", 4)  # back to the shipped value: the shipped key again
    keys.clear()
    make_worlds(Cache(), cfg)
    assert dict(keys)["world"] == shipped
