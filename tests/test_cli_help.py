"""Every command's --help: no `<bool>` placeholder beside a flag, no `[default: X]` beside a different
"(default N)" in the same help, and the example it prints runs on the README's world (tested where cheap)."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from vlselect.cli import app


def _commands(cmd, path=()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, path + (name,))


COMMANDS = [p for p, _ in _commands(typer.main.get_command(app))]


def _help(path) -> str:
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    assert res.exit_code == 0, res.output
    return res.output


def _option_rows(text: str) -> list[str]:
    """One string per option row (continuation lines joined)."""
    rows, cur = [], None
    for line in text.splitlines():
        body = line.strip().strip("│").strip()
        if re.match(r"^(\*\s+)?--?[a-zA-Z]", body):
            if cur is not None:
                rows.append(cur)
            cur = body
        elif cur is not None and body and not body.startswith("╰") and not body.startswith("╭"):
            cur += " " + body
        elif cur is not None:
            rows.append(cur)
            cur = None
    if cur is not None:
        rows.append(cur)
    return rows


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: "-".join(p) or "vlselect")
def test_help_has_no_bool_placeholder_and_no_contradicting_default(path):
    text = _help(path)
    assert "<bool>" not in text
    for row in _option_rows(text):
        shown = re.search(r"\[default: ([^\]]+)\]", row)
        said = re.search(r"\(default:? ([^;),]+)", row)
        if shown and said:
            assert shown.group(1).strip() == said.group(1).strip(), row


def test_bench_quick_help_matches_readme_minutes():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    minutes = re.search(r"about (\d+) minutes", " ".join(_help(("bench",)).split())).group(1)
    assert f"`make demo` takes about {minutes} minutes" in readme
