"""Run the ``vlselect`` CLI in-process for a test: one helper instead of a copy per test file."""

from __future__ import annotations

from vlselect.cli import main


def run(argv, capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr with whitespace normalised)``: rich may wrap long lines."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())
