"""CLI of the gradient features and the warm-up (issue 4): bad input exits 2 with a message naming the value and
the fix, before any model is loaded."""

from __future__ import annotations

import json

import pytest

from vlselect.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


@pytest.fixture()
def pool_file(tmp_path):
    p = tmp_path / "pool.json"
    p.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                                           {"from": "gpt", "value": "hello"}]}]))
    return p


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--projection", "sparse"], "--projection 'sparse' is unknown"),
        (["--params", "mlp"], "--params 'mlp' is unknown"),
        (["--shard", "3/2"], "bad --shard value '3/2'"),
        (["--batch-size", "0"], "--batch-size 0 must be at least 1"),
        (["--projection", "factored", "--adam-state", "x.pt"], "cannot be combined with --projection factored"),
        (["--also", "self_attn"], "--also 'self_attn': expected SET=DIR"),
        (["--also", "lora=x"], "parameter set 'lora' is already written"),
        (["--also", "mlp=x"], "--params 'mlp' is unknown"),
    ],
)
def test_features_gradients_bad_options_exit_2(tmp_path, pool_file, capsys, extra, needle):
    code, err = _run(["features", "gradients", "--model", str(tmp_path / "m"), "--pool", str(pool_file),
                      "--out", str(tmp_path / "o"), *extra], capsys)
    assert code == 2
    assert needle in " ".join(err.split())


def test_features_gradients_missing_model_exits_2(tmp_path, pool_file, capsys):
    code, err = _run(["features", "gradients", "--model", str(tmp_path / "nomodel"), "--pool", str(pool_file),
                      "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 2 and "nomodel" in err and "fix" in err


def test_train_warmup_bad_rule_and_ratio_exit_2(tmp_path, pool_file, capsys):
    code, err = _run(["train", "warmup", "--model", str(tmp_path / "m"), "--pool", str(pool_file), "--rule", "less",
                      "--out", str(tmp_path / "w")], capsys)
    assert code == 2 and "rule 'less' is unknown" in err
    code, err = _run(["train", "warmup", "--model", str(tmp_path / "m"), "--pool", str(pool_file), "--rule", "tive",
                      "--ratio", "1.5", "--out", str(tmp_path / "w")], capsys)
    assert code == 2 and "ratio 1.5 must be in (0, 1]" in err
