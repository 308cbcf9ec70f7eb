"""The settings table of docs/configuration.md is the one the ``Settings`` fields make."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from r3_service.config import Settings, settings_table

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"


def _table_in(text: str) -> str:
    """The Markdown table that starts at the page's ``| variable |`` header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variable |"))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end])


def test_docs_hold_the_settings_table() -> None:
    page = _table_in(DOCS.read_text(encoding="utf-8"))
    assert page == settings_table(), "regenerate with: python -m r3_service.config"


def test_the_table_has_a_row_per_setting() -> None:
    rows = settings_table().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [
        f"| `R3_{name.upper()}`" for name in Settings.model_fields
    ]
    assert all(field.description for field in Settings.model_fields.values())


def test_module_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "r3_service.config"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout == settings_table() + "\n"
    assert "Warning" not in out.stderr
