"""The CLI error printer prints a VlselectError's message literally (issue 13 item 5)."""

from __future__ import annotations

from vlselect.cli import main


def test_error_message_brackets_are_printed_literally(tmp_path, capsys):
    # a path with rich-markup-like brackets: before the fix '[lmms]' was read as a style tag and vanished
    missing = tmp_path / "vlselect[lmms].json"
    try:
        main(["pool", "stats", str(missing)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert f"pool file not found: {missing}" in err
    assert err.startswith("error: ")
    assert "Traceback" not in err
