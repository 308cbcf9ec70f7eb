"""Prompt datasets: JSON or JSONL rows ``{"input", "output"?, "qtype"?}`` and a resumable stream."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Example", "PromptStream", "load_examples", "split_eval"]

_QTYPES = ("OPENENDED", "CONSTRAINED")


@dataclass(frozen=True)
class Example:
    """One prompt: its text, the reference answer (sent as ``reference``) and the query type."""

    input: str
    output: str | None = None
    qtype: str | None = None


def _example(row: Any, where: str) -> Example:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object")
    text = row.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: 'input' must be a non-empty string")
    output = row.get("output")
    if output is not None and not isinstance(output, str):
        raise ValueError(f"{where}: 'output' must be a string or null")
    qtype = row.get("qtype")
    if qtype is not None:
        if not isinstance(qtype, str) or qtype.upper() not in _QTYPES:
            raise ValueError(f"{where}: 'qtype' must be OPENENDED, CONSTRAINED or null")
        qtype = qtype.upper()
    return Example(text, output or None, qtype)


def load_examples(path: str | Path) -> list[Example]:
    """Read a JSON array or JSONL file of rows ``{"input", "output"?, "qtype"?}``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(text)
        examples = [_example(r, f"{path}[{i}]") for i, r in enumerate(rows)]
    else:
        examples = [
            _example(json.loads(line), f"{path}:{i + 1}")
            for i, line in enumerate(text.splitlines())
            if line.strip()
        ]
    if not examples:
        raise ValueError(f"{path}: no rows")
    return examples


def split_eval(
    examples: list[Example], eval_size: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """``(train, eval)``: ``eval_size`` rows chosen by a seeded shuffle are held out."""
    if eval_size <= 0:
        return examples, []
    if eval_size >= len(examples):
        raise ValueError(f"eval_size {eval_size} leaves no training rows of {len(examples)}")
    order = np.random.default_rng(seed).permutation(len(examples))
    held = set(order[:eval_size].tolist())
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]


class PromptStream:
    """Endless, reshuffled-each-epoch order over the rows; its state is one integer.

    Epoch ``e`` visits the rows in ``default_rng(seed + e).permutation(n)``; ``position``
    counts the rows handed out so far, so a resumed run continues with the same prompts.
    """

    def __init__(self, examples: list[Example], seed: int, position: int = 0) -> None:
        if not examples:
            raise ValueError("no training rows")
        self.examples = examples
        self.seed = seed
        self.position = position
        self._epoch = -1
        self._order: np.ndarray = np.arange(0)

    def _index(self, position: int) -> int:
        n = len(self.examples)
        epoch = position // n
        if epoch != self._epoch:
            self._order = np.random.default_rng(self.seed + epoch).permutation(n)
            self._epoch = epoch
        return int(self._order[position % n])

    def next_batch(self, size: int, rank: int = 0, world_size: int = 1) -> list[Example]:
        """The next ``size`` rows for process ``rank`` of ``world_size`` (all advance alike)."""
        start = self.position + rank * size
        rows = [self.examples[self._index(start + i)] for i in range(size)]
        self.position += size * world_size
        return rows

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])
        self.seed = int(state["seed"])
