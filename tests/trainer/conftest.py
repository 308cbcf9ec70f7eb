"""Fixtures of the trainer tests: a tiny random causal LM with a word-level chat tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tiny_lm import PROMPTS, build_tiny_lm


def write_prompts(path: Path, qtype: str | None = "OPENENDED") -> Path:
    """A JSONL dataset of the tiny prompts."""
    rows = [{"input": p, "output": p, "qtype": qtype} for p in PROMPTS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny random causal LM and its tokenizer."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def tiny_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JSONL prompts for the tiny LM (all OPENENDED)."""
    return write_prompts(tmp_path_factory.mktemp("data") / "prompts.jsonl")
