"""``vlselect select``: the CLI contract of issue 5 item 6: outputs per budget, pool files, FeatureStore inputs, and
every user error → exit 2 with a message naming the file or parameter and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlselect.cli import main

N = 60


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, " ".join((cap.out + cap.err).split())


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    recs = [
        {"id": f"s{i}", "image": f"coco/train2017/{i}.jpg",
         "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": f"thing {i}"}]}
        for i in range(N)
    ]
    (tmp_path / "pool.json").write_text(json.dumps(recs))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "feats.npy", rng.normal(size=(N, 8)).astype(np.float32))
    np.save(tmp_path / "short.npy", rng.normal(size=(N - 1, 8)).astype(np.float32))
    np.save(tmp_path / "el2n.npy", np.arange(N, dtype=np.float64)[::-1].copy())
    (tmp_path / "tasks.json").write_text(json.dumps([["a", "b", "c"][i % 3] for i in range(N)]))
    (tmp_path / "short_tasks.json").write_text(json.dumps(["a"] * (N - 1)))
    return tmp_path


def _store(path: Path, fingerprint: str, arrays: dict[str, np.ndarray]) -> Path:
    from vlselect.features import FeatureStore

    spec = {k: ((None if v.ndim == 1 else v.shape[1]), str(v.dtype)) for k, v in arrays.items()}
    st = FeatureStore.create(path, arrays=spec, n_rows=N, shard_size=N, meta={"pool_fingerprint": fingerprint},
                             sample_ids=[f"s{i}" for i in range(N)])
    st.write_shard(0, arrays)
    st.finalise()
    return path


def test_list_shows_every_method_with_roles_and_defaults(capsys):
    code, out = _run(["select", "--list"], capsys)
    assert code == 0
    for name in ("random", "random_stratified", "length", "el2n", "perplexity", "semdedup", "d2pruning", "less"):
        assert name in out
    assert "--param prune_subset 'bottom'" in out and "--param gamma 0.4" in out and "--input val/* required" in out


def test_one_budget_with_a_pool_writes_every_file(work: Path, capsys):
    out = work / "o"
    code, text = _run(["select", "el2n", "--input", f"el2n={work / 'el2n.npy'}", "--pool", str(work / "pool.json"),
                       "--budget", "0.1", "--out", str(out)], capsys)
    assert code == 0, text
    idx = np.load(out / "indices.npy")
    assert idx.dtype == np.int64 and idx.tolist() == [59, 58, 57, 56, 55, 54]  # lowest EL2N first
    scores = np.load(out / "scores.npy")
    assert scores.dtype == np.float64 and scores.shape == (N,)
    assert (out / "ids.txt").read_text().split() == [f"s{i}" for i in idx]
    subset = json.loads((out / "subset.json").read_text())
    assert [r["id"] for r in subset] == [f"s{i}" for i in idx]
    m = json.loads((out / "manifest.json").read_text())
    assert m["method"] == "el2n" and m["params"] == {"prune_subset": "bottom"} and m["seed"] == 0
    assert m["budget"]["count"] == 6 and m["pool"]["rows"] == N and m["pool"]["fingerprint"]
    assert m["extra"]["strict_official"] is False and m["extra"]["shortfall"] == 0
    assert m["extra"]["inputs"]["el2n"]["md5"] and m["extra"]["excluded_rows"]["count"] == 0
    assert "task" in text and "pool" in text and "subset" in text  # the per-task table


def test_several_budgets_write_one_folder_each(work: Path, capsys):
    out = work / "multi"
    code, text = _run(["select", "random_stratified", "--tasks", str(work / "tasks.json"), "--budget", "0.1,30",
                       "--seed", "3", "--out", str(out)], capsys)
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["frac0.1", "n30"]
    a = np.load(out / "frac0.1" / "indices.npy")
    b = np.load(out / "n30" / "indices.npy")
    assert a.shape == (6,) and b.shape == (30,)
    tasks = json.loads((work / "tasks.json").read_text())
    assert sorted(tasks[i] for i in b).count("a") == 10  # 20 rows per task → 10 each
    m = json.loads((out / "n30" / "manifest.json").read_text())
    assert m["extra"]["task_counts"]["b"] == {"pool": 20, "subset": 10}
    assert not (out / "n30" / "subset.json").exists()  # no pool given


def test_feature_store_input_with_matching_pool(work: Path, capsys):
    from vlselect.pool import open_pool

    fp = open_pool(work / "pool.json").fingerprint
    feats = np.load(work / "feats.npy")
    store = _store(work / "store", fp, {"activations": feats, "loss": np.linspace(0, 1, N)})
    code, text = _run(["select", "semdedup", "--input", f"features={store}:activations", "--pool",
                       str(work / "pool.json"), "--budget", "10", "--param", "n_clusters=3", "--out",
                       str(work / "o")], capsys)
    assert code == 0, text
    assert np.load(work / "o" / "indices.npy").shape == (10,)
    # DIR:array picks another array of the store
    code, text = _run(["select", "perplexity", "--input", f"losses={store}:loss", "--pool", str(work / "pool.json"),
                       "--budget", "5", "--param", "prune_subset=high", "--out", str(work / "o2")], capsys)
    assert code == 0, text
    assert np.load(work / "o2" / "indices.npy").tolist() == [59, 58, 57, 56, 55]
    m = json.loads((work / "o2" / "manifest.json").read_text())
    assert m["extra"]["inputs"]["losses"]["array"] == "loss" and m["extra"]["inputs"]["losses"]["pool_fingerprint"] == fp


def test_feature_store_for_another_pool_is_refused(work: Path, capsys):
    store = _store(work / "other", "0" * 64, {"activations": np.load(work / "feats.npy")})
    code, text = _run(["select", "semdedup", "--input", f"features={store}:activations", "--pool",
                       str(work / "pool.json"), "--budget", "10", "--param", "n_clusters=3", "--out",
                       str(work / "o")], capsys)
    assert code == 2
    assert "different pool" in text and "other" in text and "pool.json" in text


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["select", "nosuch", "--budget", "1", "--out", "o"], ["unknown selection method 'nosuch'", "random"]),
        (["select", "el2n", "--input", "el2n={w}/el2n.npy", "--budget", "1", "--param", "bogus=1", "--out", "o"],
         ["no parameter 'bogus'", "prune_subset"]),
        (["select", "el2n", "--input", "el2n={w}/el2n.npy", "--budget", "abc", "--out", "o"], ["budget 'abc'"]),
        (["select", "el2n", "--input", "el2n={w}/el2n.npy", "--budget", "61", "--out", "o"],
         ["larger than the pool", "60"]),
        (["select", "el2n", "--input", "el2n={w}/el2n.npy", "--budget", "1.5", "--out", "o"], ["outside (0, 1]"]),
        (["select", "semdedup", "--input", "features={w}/short.npy", "--pool", "{w}/pool.json", "--budget", "3",
          "--out", "o"], ["short.npy", "59 rows", "pool.json", "60"]),
        (["select", "d2pruning", "--input", "features={w}/feats.npy", "--input", "scores={w}/el2n.npy",
          "--input", "scores2={w}/el2n.npy", "--budget", "3", "--out", "o"], ["no input role 'scores2'"]),
        (["select", "d2pruning", "--input", "features={w}/feats.npy", "--budget", "3", "--out", "o"],
         ["needs the input role 'scores'", "--input scores=PATH"]),
        (["select", "semdedup", "--input", "features={w}/nothere.npy", "--budget", "3", "--out", "o"],
         ["nothere.npy", "no such file"]),
        (["select", "d2pruning", "--input", "features={w}/feats.npy", "--input", "scores={w}/short.npy",
          "--budget", "3", "--out", "o"], ["short.npy", "feats.npy"]),
        (["select", "random", "--pool", "{w}/pool.json", "--tasks", "{w}/short_tasks.json", "--budget", "3", "--out",
          "o"], ["short_tasks.json", "59 labels", "60 records", "pool.json"]),
        (["select", "random", "--tasks", "{w}/tasks.json", "--budget", "3", "--seed", "1", "--param", "seed=2",
          "--out", "o"], ["disagree"]),
        (["select", "random", "--pool", "{w}/nopool.json", "--budget", "3", "--out", "o"], ["nopool.json"]),
    ],
)
def test_user_errors_exit_2_with_a_clear_message(work: Path, capsys, argv, expect):
    argv = [a.replace("{w}", str(work)) if "{w}" in a else (str(work / a) if a == "o" else a) for a in argv]
    code, text = _run(argv, capsys)
    assert code == 2, text
    assert "Traceback" not in text
    for e in expect:
        assert e in text, (e, text)


def test_nan_rows_reported_on_the_console_and_in_the_manifest(work: Path, capsys):
    v = np.arange(N, dtype=np.float64)
    v[[4, 9]] = np.nan
    np.save(work / "nan.npy", v)
    code, text = _run(["select", "el2n", "--input", f"el2n={work / 'nan.npy'}", "--budget", "5",
                       "--out", str(work / "o")], capsys)
    assert code == 0, text
    assert "2 pool row(s) with NaN or inf excluded" in text
    m = json.loads((work / "o" / "manifest.json").read_text())
    assert m["extra"]["excluded_rows"]["rows"] == [4, 9]
    assert np.load(work / "o" / "indices.npy").tolist() == [0, 1, 2, 3, 5]


def test_json_list_input_and_strict_flag_recorded(work: Path, capsys):
    (work / "lengths.json").write_text(json.dumps([i % 7 for i in range(N)]))
    code, text = _run(["select", "length", "--input", f"lengths={work / 'lengths.json'}", "--budget", "3",
                       "--strict-official", "--out", str(work / "o")], capsys)
    assert code == 0, text
    assert np.load(work / "o" / "indices.npy").tolist() == [6, 13, 20]  # length 6, ties by row
    m = json.loads((work / "o" / "manifest.json").read_text())
    assert m["extra"]["strict_official"] is True and m["extra"]["inputs"]["lengths"]["kind"] == "json"


def test_length_from_the_pool_when_no_lengths_input(work: Path, capsys):
    recs = json.loads((work / "pool.json").read_text())
    recs[7]["conversations"][1]["value"] = "a much longer answer than the others here"
    del recs[3]["image"]
    recs[3]["conversations"][0]["value"] = "What is it?"
    (work / "pool.json").write_text(json.dumps(recs))
    code, text = _run(["select", "length", "--pool", str(work / "pool.json"), "--budget", "2",
                       "--out", str(work / "o")], capsys)
    assert code == 0, text
    idx = np.load(work / "o" / "indices.npy").tolist()
    scores = np.load(work / "o" / "scores.npy")
    assert idx == [7, 0] and scores[7] == 4 + 8 + 128 and scores[3] == 3 + 2


def test_validation_store_of_another_pool_is_fine_for_a_non_aligned_role(work: Path, capsys):
    from vlselect.pool import open_pool

    fp = open_pool(work / "pool.json").fingerprint
    rng = np.random.default_rng(3)
    train = _store(work / "train", fp, {"gradients": rng.normal(size=(N, 8)).astype(np.float32)})
    val = _store(work / "val", "f" * 64, {"gradients": rng.normal(size=(N, 8)).astype(np.float32)})
    code, text = _run(["select", "less", "--input", f"train={train}", "--input", f"val/gqa={val}",
                       "--pool", str(work / "pool.json"), "--budget", "5", "--out", str(work / "o")], capsys)
    assert code == 0, text
    assert np.load(work / "o" / "indices.npy").shape == (5,)


def test_coincide_takes_layout_from_the_activation_store_manifest(tmp_path):
    """num_layers / hidden_size default to the layout the extractor recorded; the selection equals the one with
    the parameters given by hand (and differs from the paper defaults, which would not even fit the width)."""
    import numpy as np

    from vlselect.cli import main
    from vlselect.features import FeatureStore

    rng = np.random.default_rng(0)
    n, layers, hidden = 60, 2, 4
    feats = rng.normal(size=(n, 2 * layers * hidden)).astype("float16")
    st = FeatureStore.create(tmp_path / "acts", arrays={"activations": (feats.shape[1], "float16")}, n_rows=n,
                             shard_size=n, meta={"layers": [1, 3], "hidden_size": hidden})
    st.write_shard(0, {"activations": feats})
    assert st.finalise()
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps(["a"] * 30 + ["b"] * 30))

    def run(out, *extra):
        with pytest.raises(SystemExit) as exc:
            main(["select", "coincide", "--input", f"features={tmp_path / 'acts'}", "--tasks", str(tasks),
                  "--budget", "0.2", "--param", "K=4", "--out", str(out), *extra])
        assert exc.value.code in (0, None)
        return np.load(out / "indices.npy")

    auto = run(tmp_path / "auto")
    manual = run(tmp_path / "manual", "--param", "num_layers=2", "--param", "hidden_size=4")
    assert auto.tolist() == manual.tolist() and len(auto) == 12
    man = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert "num_layers" in json.dumps(man)


def test_pool_with_tasks_selects_on_the_given_labels_and_keeps_the_subset(work, capsys):
    """An unknown layout (issue 13): --tasks next to --pool gives the labels, and the pool still gives subset.json."""
    pool = work / "odd.json"
    pool.write_text(json.dumps([{"id": f"r{i}", "image": f"misc/{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}]} for i in range(N)]))
    code, text = _run(["select", "random_stratified", "--pool", str(pool), "--budget", "0.1", "--out",
                       str(work / "refused")], capsys)
    assert code == 2 and "--tasks" in text and not (work / "refused").exists()
    labels = ["x" if i < 30 else "y" for i in range(N)]
    (work / "odd_tasks.json").write_text(json.dumps(labels))
    code, text = _run(["select", "random_stratified", "--pool", str(pool), "--tasks", str(work / "odd_tasks.json"),
                       "--budget", "0.1", "--out", str(work / "sel")], capsys)
    assert code == 0, text
    idx = np.load(work / "sel" / "indices.npy")
    assert sorted(labels[i] for i in idx) == ["x"] * 3 + ["y"] * 3  # stratified over the given labels, 3 + 3
    sub = json.loads((work / "sel" / "subset.json").read_text())
    assert sorted(r["id"] for r in sub) == sorted(f"r{i}" for i in idx)
    man = json.loads((work / "sel" / "manifest.json").read_text())
    assert man["extra"]["tasks"]["path"] == str(work / "odd_tasks.json")
    # or from a field of the records
    recs = json.loads(pool.read_text())
    for r, t in zip(recs, labels):
        r["kind"] = t
    pool.write_text(json.dumps(recs))
    code, text = _run(["select", "random_stratified", "--pool", str(pool), "--task-field", "kind", "--budget", "0.1",
                       "--out", str(work / "sel2")], capsys)
    assert code == 0, text
    assert np.array_equal(np.load(work / "sel2" / "indices.npy"), idx)  # the same labels, the same seed


def test_less_tive_from_gradient_stores(work: Path, capsys):
    """The composite from the command line: LESS's scores from one gradient store, TIVE's instance values from
    another (its ``gradients`` array, with no ``:array`` given), the targets from a .npy; the same subset as the
    Python API gives."""
    from vlselect.pool import open_pool
    from vlselect.select import run_method

    fp = open_pool(work / "pool.json").fingerprint
    rng = np.random.default_rng(3)
    g, gi = rng.normal(size=(N, 6)).astype(np.float32), rng.normal(size=(N, 4)).astype(np.float32)
    norms = np.abs(rng.normal(size=N)).astype(np.float32)
    _store(work / "g", fp, {"gradients": g, "grad_norms": norms})
    _store(work / "gi", fp, {"gradients": gi, "grad_norms": norms})
    np.save(work / "vx.npy", rng.normal(size=(3, 6)).astype(np.float32))
    np.save(work / "vy.npy", rng.normal(size=(2, 6)).astype(np.float32))
    code, text = _run(["select", "less_tive", "--input", f"train={work / 'g'}", "--input", f"instance={work / 'gi'}",
                       "--input", f"val/x={work / 'vx.npy'}", "--input", f"val/y={work / 'vy.npy'}",
                       "--tasks", str(work / "tasks.json"), "--budget", "12", "--seed", "2", "--out", str(work / "o")],
                      capsys)
    assert code == 0, text
    tasks = np.array(json.loads((work / "tasks.json").read_text()))
    [want] = run_method("less_tive", {"train": g, "instance": gi, "val/x": np.load(work / "vx.npy"),
                                      "val/y": np.load(work / "vy.npy")}, 12, tasks=tasks, seed=2)
    got = np.load(work / "o" / "indices.npy")
    assert got.tolist() == want.indices.tolist() and got.size == 12
    m = json.loads((work / "o" / "manifest.json").read_text())
    assert {t: c["subset"] for t, c in m["extra"]["task_counts"].items()} == want.info["task_counts"]
    assert m["extra"]["inputs"]["instance"]["array"] == "gradients"


def test_less_support_from_the_command_line(work: Path, capsys):
    """``--param support=c``: task c is a third of the 60 rows, so 4 of a 12-row budget are c rows; the other 8 are
    LESS's top rows among tasks a and b (LESS, run separately, as the source); without the parameter the error
    names it and the pool's tasks."""
    from vlselect.select import run_method

    rng = np.random.default_rng(5)
    g = rng.normal(size=(N, 6)).astype(np.float32)
    np.save(work / "g.npy", g)
    np.save(work / "vx.npy", rng.normal(size=(3, 6)).astype(np.float32))
    base = ["select", "less_support", "--input", f"train={work / 'g.npy'}", "--input", f"val/x={work / 'vx.npy'}",
            "--tasks", str(work / "tasks.json"), "--budget", "12"]
    code, text = _run([*base, "--out", str(work / "o")], capsys)
    assert code == 2 and "support=TASK" in text and "a, b, c" in text, text
    code, text = _run([*base, "--param", "support=c", "--out", str(work / "o")], capsys)
    assert code == 0, text
    got = np.load(work / "o" / "indices.npy")
    tasks = np.array([["a", "b", "c"][i % 3] for i in range(N)])
    assert (tasks[got] == "c").sum() == 4 and got.size == np.unique(got).size == 12
    [less] = run_method("less", {"train": g[tasks != "c"], "val/x": np.load(work / "vx.npy")}, 8)
    assert got[:8].tolist() == np.flatnonzero(tasks != "c")[less.indices].tolist()


def test_less_tive_support_from_the_command_line(work: Path, capsys):
    """The support share as ``less_support`` (4 of 12 rows from task c); the other 8 rows hold as many rows of a and
    b as LESS's top 8 among a and b (LESS, run separately, as the source), drawn inside each task."""
    from vlselect.select import run_method

    rng = np.random.default_rng(6)
    g = rng.normal(size=(N, 6)).astype(np.float32)
    np.save(work / "g.npy", g)
    np.save(work / "vx.npy", rng.normal(size=(3, 6)).astype(np.float32))
    code, text = _run(["select", "less_tive_support", "--input", f"train={work / 'g.npy'}", "--input",
                       f"val/x={work / 'vx.npy'}", "--tasks", str(work / "tasks.json"), "--budget", "12",
                       "--param", "support=c", "--out", str(work / "o")], capsys)
    assert code == 0, text
    got = np.load(work / "o" / "indices.npy")
    tasks = np.array([["a", "b", "c"][i % 3] for i in range(N)])
    other = np.flatnonzero(tasks != "c")
    [less] = run_method("less", {"train": g[other], "val/x": np.load(work / "vx.npy")}, 8)
    assert (tasks[got] == "c").sum() == 4 and got.size == np.unique(got).size == 12
    assert {t: int((tasks[got] == t).sum()) for t in "ab"} == {t: int((tasks[other[less.indices]] == t).sum())
                                                              for t in "ab"}
    m = json.loads((work / "o" / "manifest.json").read_text())
    assert m["extra"]["info"]["support_rows"] == 4 and m["params"]["support"] == "c"
    assert {t: c["subset"] for t, c in m["extra"]["task_counts"].items()} == {"a": 2, "b": 6, "c": 4}
