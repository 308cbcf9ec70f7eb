"""Locations of the query-type heads shipped with the package."""

from __future__ import annotations

from pathlib import Path

HEAD_FILE = "qtype_head.json"


def default_head_path() -> Path | None:
    """The head trained for the embedded default encoder, if this install has it."""
    path = Path(__file__).parent / "classifier" / "heads" / "all-MiniLM-L6-v2.json"
    return path if path.is_file() else None
