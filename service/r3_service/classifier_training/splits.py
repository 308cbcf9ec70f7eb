"""Labelled prompts (JSON or JSONL) and the validation splits used to judge a classifier."""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from r3_service.classifier.text import split_alpaca

OPENENDED = "OPENENDED"
CONSTRAINED = "CONSTRAINED"
LABELS: tuple[str, str] = (CONSTRAINED, OPENENDED)


def _parse_rows(path: Path) -> list[object]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of rows")
        return list(rows)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number} is not JSON ({exc.msg})") from None
    return rows


def load_rows(path: Path | str) -> tuple[list[str], np.ndarray]:
    """Texts and 0/1 labels (1 = OPENENDED) of ``{"input", "qtype"}`` rows.

    ``path`` is a JSON list or JSONL (one object a line). ``qtype`` is case-insensitive.
    """
    source = Path(path)
    rows = _parse_rows(source)
    if not rows:
        raise ValueError(f"{source}: no rows")
    texts: list[str] = []
    labels: list[int] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("input"), str):
            raise ValueError(f"{source}: row {i} has no string 'input'")
        qtype = str(row.get("qtype", "")).upper()
        if qtype not in LABELS:
            raise ValueError(
                f"{source}: row {i} has qtype {row.get('qtype')!r}, not one of {LABELS}"
            )
        texts.append(row["input"])
        labels.append(1 if qtype == OPENENDED else 0)
    return texts, np.asarray(labels, dtype=np.int64)


_SKIP = frozenset(
    "please kindly now hey hi can could would you i need want to help me given the a an".split()
)


def task_family(text: str) -> str:
    """The leading task word of a prompt (its verb or question word), lower-cased."""
    instruction, _ = split_alpaca(text)
    words = re.findall(r"[a-z]+", instruction.lower())
    for word in words[:4]:
        if word not in _SKIP:
            return word
    return words[0] if words else ""


def group_folds(groups: Sequence[str], folds: int) -> np.ndarray:
    """Fold of each row such that no group spans two folds (greedy size balancing)."""
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    order = sorted(sizes, key=lambda g: (-sizes[g], zlib.crc32(g.encode())))
    load = [0] * folds
    fold_of: dict[str, int] = {}
    for g in order:
        k = min(range(folds), key=lambda j: (load[j], j))
        fold_of[g] = k
        load[k] += sizes[g]
    return np.asarray([fold_of[g] for g in groups], dtype=np.int64)


def random_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Stratified random fold of each row."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=np.int64)
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        rng.shuffle(idx)
        out[idx] = np.arange(len(idx)) % folds
    return out


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
