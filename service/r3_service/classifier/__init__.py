"""Query-type classifier (OPENENDED vs CONSTRAINED) on the query embedding the service computes.

Runtime (``head``, ``features``) needs numpy only; ``train`` adds the
``r3-train-classifier`` command.
"""

from __future__ import annotations

from r3_service.classifier.features import FEATURE_NAMES, split_query, text_features
from r3_service.classifier.head import (
    CONSTRAINED,
    HEAD_FILE,
    LABELS,
    OPENENDED,
    QTypeHead,
    load_head,
    load_shipped_head,
    shipped_head_path,
)

__all__ = [
    "CONSTRAINED",
    "FEATURE_NAMES",
    "HEAD_FILE",
    "LABELS",
    "OPENENDED",
    "QTypeHead",
    "load_head",
    "load_shipped_head",
    "shipped_head_path",
    "split_query",
    "text_features",
]
