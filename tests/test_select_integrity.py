"""Issue 11, the selection side: missing rows travel with their arrays, a corrupt store is an error naming the file,
parameters are checked against their declared constraints for every caller, manifests name every seed; issue 15
item 4: the budget rule, ``select --list`` for ``length``, the excluded-rows warning (wording, stderr)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from vlselect.cli import main
from vlselect.errors import FeatureError, SelectionError
from vlselect.features import FeatureStore
from vlselect.select import REGISTRY, resolve_budget, run_method
from vlselect.select.io import load_input

N = 40
MISSING = [3, 17, 30]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, " ".join(cap.out.split()), " ".join(cap.err.split())


def _blobs(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (4, d))
    return (centres[np.arange(n) % 4] + rng.normal(0, 0.3, (n, d))).astype(np.float32)


def _acts_store(path: Path, missing=MISSING, n: int = N) -> Path:
    """An activation-like store as ``features activations --losses --skip-bad`` leaves it: the rows of unreadable
    images are zero-filled and recorded missing."""
    feats = _blobs(n, 4)  # num_layers=1, hidden_size=2
    el2n = np.linspace(0.2, 0.9, n).astype(np.float32)
    feats[missing] = 0
    el2n[missing] = 0  # the lowest EL2N: the first rows a bottom-EL2N selection would take
    st = FeatureStore.create(path, arrays={"activations": (4, "float32"), "el2n": (None, "float32")}, n_rows=n,
                             shard_size=16, meta={"pool_fingerprint": "fp"}, sample_ids=[f"s{i}" for i in range(n)])
    for sh in st.pending():
        rows = [r for r in missing if sh.start <= r < sh.stop]
        st.write_shard(sh.index, {"activations": feats[sh.start:sh.stop], "el2n": el2n[sh.start:sh.stop]}, rows)
    assert st.finalise()
    return path


def _grad_store(path: Path, data: np.ndarray, missing=()) -> Path:
    data = np.array(data, dtype=np.float32)
    data[list(missing)] = 0
    st = FeatureStore.create(path, arrays={"gradients": (data.shape[1], "float32")}, n_rows=data.shape[0],
                             shard_size=64, meta={})
    for sh in st.pending():
        rows = [r for r in missing if sh.start <= r < sh.stop]
        st.write_shard(sh.index, {"gradients": data[sh.start:sh.stop]}, rows)
    assert st.finalise()
    return path


# ------------------------------------------------------------------ 1. missing rows in every selection path


def test_python_api_as_the_readme_shows_never_selects_a_missing_row(tmp_path):
    acts = FeatureStore.open(_acts_store(tmp_path / "acts"))
    with pytest.warns(RuntimeWarning, match="3 pool row"):
        [sel] = run_method("el2n", {"el2n": acts.array("el2n")}, 0.2)
    # budgets count the 37 selectable rows; bottom EL2N would otherwise take the three zero-filled rows first
    assert sel.count == int(0.2 * 37) == 7
    assert not set(MISSING) & set(sel.indices.tolist())
    assert sel.indices.tolist() == [0, 1, 2, 4, 5, 6, 7]
    ex = sel.info["excluded_rows"]
    assert (ex["count"], ex["missing"], ex["nonfinite"], ex["selectable"], ex["rows"]) == (3, 3, 0, 37, MISSING)
    assert np.isnan(sel.scores[MISSING]).all()
    with pytest.warns(RuntimeWarning):
        [c] = run_method("coincide", {"features": acts.array("activations")}, 0.5, seed=0,
                         params={"n_clusters": 4, "num_layers": 1, "hidden_size": 2})
    assert c.count == int(0.5 * 37) and not set(MISSING) & set(c.indices.tolist())


def test_a_slice_does_not_carry_the_mask_and_exclude_still_works(tmp_path):
    acts = FeatureStore.open(_acts_store(tmp_path / "acts"))
    arr = acts.array("el2n")
    assert arr.missing.tolist() == [i in MISSING for i in range(N)]
    assert getattr(arr[:10], "missing", None) is None and getattr(np.asarray(arr) * 1, "missing", None) is None
    with pytest.warns(RuntimeWarning, match="passed in exclude"):
        [sel] = run_method("el2n", {"el2n": np.array(arr[:])}, 3, exclude=acts.missing())
    assert sel.indices.tolist() == [0, 1, 2]


def test_strict_mode_still_leaves_missing_rows_out(tmp_path):
    acts = FeatureStore.open(_acts_store(tmp_path / "acts"))
    with pytest.warns(RuntimeWarning):
        [sel] = run_method("el2n", {"el2n": acts.array("el2n")}, 4, strict_official=True)
    assert not set(MISSING) & set(sel.indices.tolist()) and sel.count == 4


def test_composites_honour_the_mask_of_every_store(tmp_path):
    acts = FeatureStore.open(_acts_store(tmp_path / "acts"))
    rng = np.random.default_rng(1)
    train = FeatureStore.open(_grad_store(tmp_path / "g", rng.normal(size=(N, 6)), missing=[8]))
    val = FeatureStore.open(_grad_store(tmp_path / "v", rng.normal(size=(5, 6)), missing=[0]))
    inputs = {"features": acts.array("activations"), "train": train.array("gradients"),
              "val/t": val.array("gradients")}
    params = {"n_clusters": 4, "num_layers": 1, "hidden_size": 2}
    for name in ("coincide_icons", "icons_coincide", "less_coincide"):
        with pytest.warns(RuntimeWarning, match="4 pool row"):
            [sel] = run_method(name, inputs, 0.25, params=params)
        assert sel.count == int(0.25 * 36), name
        assert not {3, 8, 17, 30} & set(sel.indices.tolist()), name
        assert sel.info["excluded_rows"]["missing"] == 4
    tasks = np.array(["a", "b", "c"])[np.arange(N) % 3]
    with pytest.warns(RuntimeWarning, match="1 pool row"):  # row 8 of the train store (no activations read)
        [sel] = run_method("less_tive", {k: v for k, v in inputs.items() if k != "features"}, 0.25, tasks=tasks)
    assert sel.count == int(0.25 * 36) and 8 not in sel.indices.tolist()
    assert sel.info["excluded_rows"]["missing"] == 1
    # less_support: the share is of the selectable rows: task c holds 13 of the 40 rows, row 8 among them, so 12
    # of 39 and 9 x 12 / 39 = 2.77 -> 3 support rows, none of them row 8
    with pytest.warns(RuntimeWarning, match="1 pool row"):
        [sel] = run_method("less_support", {k: v for k, v in inputs.items() if k != "features"}, 0.25, tasks=tasks,
                           params={"support": "c"})
    assert sel.count == 9 and 8 not in sel.indices.tolist() and sel.info["support_rows"] == 3
    assert (tasks[sel.indices] == "c").sum() >= 3 and sel.info["support_share"] == pytest.approx(12 / 39)


def test_random_and_length_with_a_store_mask_given_as_exclude(tmp_path):
    acts = FeatureStore.open(_acts_store(tmp_path / "acts"))
    for seed in range(5):
        with pytest.warns(RuntimeWarning):
            [sel] = run_method("random", {}, 0.9, tasks=["a"] * N, seed=seed, exclude=acts.missing())
        assert sel.count == int(0.9 * 37) and not set(MISSING) & set(sel.indices.tolist())


def test_cli_store_input_excludes_missing_rows_and_warns_on_stderr(tmp_path, capsys):
    store = _acts_store(tmp_path / "acts")
    code, out, err = _run(["select", "el2n", "--input", f"el2n={store}", "--budget", "5", "--out",
                           str(tmp_path / "o")], capsys)
    assert code == 0, out + err
    assert np.load(tmp_path / "o" / "indices.npy").tolist() == [0, 1, 2, 4, 5]
    assert "3 pool row(s) excluded as missing" in err and "first 3, 17, 30" in err
    assert "NaN or inf" not in err and "((" not in err and "))" not in err
    assert "excluded as missing" not in out
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["extra"]["excluded_rows"]["missing"] == 3 and m["extra"]["excluded_rows"]["selectable"] == N - 3


# ------------------------------------------------------------------ 2. a corrupt or inconsistent store


def _corrupt(store: Path, how: str) -> None:
    f = store / "missing.npy"
    if how == "garbage":
        f.write_bytes(b"\x93NUMPY garbage")
    elif how == "absent":
        f.unlink()
    elif how == "wrong_shape":
        np.save(f, np.zeros(N - 1, dtype=bool))
    elif how == "wrong_dtype":
        np.save(f, np.zeros(N, dtype=np.float32))
    elif how == "disagrees_with_manifest":
        np.save(f, np.zeros(N, dtype=bool))  # the manifest records 3 missing rows


@pytest.mark.parametrize("how", ["garbage", "absent", "wrong_shape", "wrong_dtype", "disagrees_with_manifest"])
def test_a_corrupt_missing_mask_is_an_error_naming_the_file(tmp_path, capsys, how):
    store = _acts_store(tmp_path / "acts")
    _corrupt(store, how)
    with pytest.raises(FeatureError, match="missing.npy") as exc:
        load_input("el2n", store)
    assert str(store) in str(exc.value) and "fix:" in str(exc.value)
    code, out, err = _run(["select", "el2n", "--input", f"el2n={store}", "--budget", "5", "--out",
                           str(tmp_path / "o")], capsys)
    assert code == 2 and "missing.npy" in out + err and "Traceback" not in out + err
    assert not (tmp_path / "o" / "indices.npy").exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"arrays": [1]}'])
def test_a_corrupt_manifest_is_an_error_naming_the_store(tmp_path, text):
    store = _acts_store(tmp_path / "acts")
    (store / "manifest.json").write_text(text)
    with pytest.raises(FeatureError, match="corrupt") as exc:
        load_input("el2n", store)
    assert str(store) in str(exc.value)


def test_a_damaged_array_file_is_an_error_naming_it(tmp_path):
    store = _acts_store(tmp_path / "acts")
    (store / "el2n.npy").write_bytes(b"not an npy file")
    with pytest.raises(FeatureError, match="el2n.npy"):
        load_input("el2n", store)


# ------------------------------------------------------------------ 3. parameter constraints, every caller


@pytest.mark.parametrize(
    "method, params, expect",
    [
        ("coincide", {"K": -3}, "n_clusters=-3"),
        ("coincide", {"n_clusters": 0}, "outside the allowed range; expected an integer >= 1"),
        ("coincide", {"K": 3.5}, "expected an integer >= 1"),
        ("coincide", {"K": True}, "expected an integer"),
        ("coincide", {"temp": "abc"}, "temp='abc'"),
        ("coincide", {"temp": 0}, "expected a number > 0"),
        ("coincide", {"sigma": float("nan")}, "sigma=nan"),
        ("coincide", {"near_duplicate_cosine_cut": 1.5}, "in [-1, 1]"),
        ("coincide", {"kmeans_seed": -1}, "kmeans_seed=-1"),
        ("less", {"normalize": "maybe"}, "expected true or false"),
        ("less", {"normalize": 1}, "expected true or false"),
        ("less", {"aggregation": "median"}, "one of max, mean"),
        ("tive", {"q": -0.1}, "q=-0.1"),
        ("tive", {"numpy_seed": 2**32}, "numpy_seed"),
        ("icons", {"top_percent": 0}, "in (0, 100]"),
        ("icons_coincide", {"candidate_factor": 0.5}, "candidate_factor=0.5"),
        ("less_coincide", {"aggregation": "median"}, "one of max, mean"),
        ("d2pruning", {"graph": "hnsw"}, "one of exact, ivfpq"),
        ("el2n", {"prune_subset": 3}, "prune_subset=3"),
    ],
)
def test_python_callers_get_the_same_checks_as_the_cli_before_any_work(monkeypatch, method, params, expect):
    import vlselect.select as sel_mod

    def no_work(*a, **k):
        raise AssertionError("the inputs were scanned before the parameters were checked")

    monkeypatch.setattr(sel_mod, "find_nonfinite_rows", no_work)
    info = REGISTRY[method]
    inputs = {r.name.replace("/*", "/t"): np.zeros((4, 2)) for r in info.roles if r.required}
    with pytest.raises(SelectionError) as exc:
        run_method(method, inputs, 0.5, tasks=["a"] * 4, params=params)
    assert expect in str(exc.value)


def test_strings_are_parsed_and_typed_values_kept():
    p = REGISTRY["coincide"].param("temp")
    assert p.convert("0.5") == 0.5 and p.convert(1) == 1.0 and isinstance(p.convert(1), float)
    k = REGISTRY["coincide"].param("K")
    assert k.convert("12") == 12 and k.convert(np.int64(12)) == 12
    assert REGISTRY["coincide"].param("kmeans_seed").convert("none") is None
    assert REGISTRY["less"].param("normalize").convert("off") is False


def test_every_numeric_parameter_declares_an_interval_and_its_default_passes():
    for name, info in REGISTRY.items():
        for p in info.params:
            assert p.convert(p.default) == p.default or p.default is None, (name, p.name)
            if p.type in (int, float) and p.choices is None:
                assert any(b is not None for b in (p.gt, p.ge, p.lt, p.le)), (name, p.name)


def test_cli_refuses_a_bad_parameter_before_reading_files(tmp_path, capsys):
    code, out, err = _run(["select", "coincide", "--input", f"features={tmp_path}/absent.npy", "--param", "K=-3",
                           "--budget", "0.2", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "n_clusters=-3" in out + err and "absent.npy" not in out + err
    code, out, err = _run(["select", "random", "--tasks", str(tmp_path / "t.json"), "--seed", "-1", "--budget",
                           "0.2", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "seed=-1" in out + err


# ------------------------------------------------------------------ 4. every seed, under its own name


def test_selection_and_manifest_name_every_seed(tmp_path, capsys):
    X = _blobs(N, 4)
    [c] = run_method("coincide", {"features": X}, 0.5, seed=3,
                     params={"n_clusters": 4, "num_layers": 1, "hidden_size": 2})
    assert c.seeds == {"seed": 3, "kmeans_seed": 1237}
    [c2] = run_method("coincide", {"features": X}, 0.5, seed=3,
                      params={"n_clusters": 4, "num_layers": 1, "hidden_size": 2, "kmeans_seed": 7})
    assert c2.seeds == {"seed": 3, "kmeans_seed": 7}
    [s] = run_method("semdedup", {"features": X}, 0.5, seed=2, params={"n_clusters": 4})
    assert s.seeds == {"seed": 2, "kmeans_seed": 1234}
    rng = np.random.default_rng(0)
    [t] = run_method("tive", {"train": rng.normal(size=(N, 3)), "norms": rng.random(N)}, 0.5,
                     tasks=[["a", "b"][i % 2] for i in range(N)], seed=1, params={"numpy_seed": 5})
    assert t.seeds == {"seed": 1, "numpy_seed": 5}
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "t.json").write_text(json.dumps(["a"] * N))
    code, out, err = _run(["select", "coincide", "--input", f"features={tmp_path / 'x.npy'}", "--tasks",
                           str(tmp_path / "t.json"), "--seed", "4", "--param", "K=4", "--param", "num_layers=1",
                           "--param", "hidden_size=2", "--budget", "0.5", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, out + err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["extra"]["seeds"] == {"seed": 4, "kmeans_seed": 1238}


# ------------------------------------------------------------------ issue 15 item 4: budget rule, --list, help


def test_budget_one_is_refused_as_ambiguous_and_both_meanings_can_be_asked_for():
    with pytest.raises(SelectionError, match=r"ambiguous: write 1.0 for the whole pool .* n1 for one row"):
        resolve_budget("1", 50)
    assert resolve_budget("1.0", 50).count == 50
    assert resolve_budget("n1", 50).count == 1 and resolve_budget("n1", 50).label == "n1"
    assert resolve_budget("n40", 50).count == 40 and resolve_budget("40", 50).count == 40
    assert resolve_budget(1, 50).count == 1 and resolve_budget(1.0, 50).count == 50  # Python types are unambiguous
    with pytest.raises(SelectionError):
        resolve_budget("nx", 50)


def test_cli_budget_one_exits_2_and_help_states_the_rule(tmp_path, capsys):
    (tmp_path / "t.json").write_text(json.dumps(["a"] * 5))
    code, out, err = _run(["select", "random", "--tasks", str(tmp_path / "t.json"), "--budget", "1", "--out",
                           str(tmp_path / "o")], capsys)
    assert code == 2 and "ambiguous" in out + err and "n1" in out + err
    code, out, err = _run(["select", "random", "--tasks", str(tmp_path / "t.json"), "--budget", "n1", "--out",
                           str(tmp_path / "o")], capsys)
    assert code == 0 and np.load(tmp_path / "o" / "indices.npy").shape == (1,)
    code, out, err = _run(["select", "--help"], capsys)
    assert code == 0 and "ambiguous" in out and "n1 for one row" in out


def test_list_says_length_needs_no_lengths_input(capsys):
    code, out, err = _run(["select", "--list"], capsys)
    assert code == 0
    assert "--input lengths optional" in out and "--input lengths required" not in out
    with pytest.raises(SelectionError, match="--pool FILE"):
        run_method("length", {}, 0.5, tasks=["a"] * 4)


def test_nonfinite_warning_wording():
    v = np.arange(6, dtype=np.float64)
    v[2] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_method("el2n", {"el2n": v}, 2)
    [w] = caught
    assert str(w.message) == "el2n: 1 pool row(s) with NaN or inf excluded; el2n: 1 row(s), first 2"
