"""Query-type classifier (OPENENDED vs CONSTRAINED).

The shipped classifier is all-MiniLM-L6-v2 fine-tuned end to end (LoRA adapters and a
linear head, :mod:`~r3_service.classifier_training.finetune`), stored as a small adapter file,
merged and exported to ONNX at first start (:mod:`~r3_service.classifier.build`) and
served by :mod:`~r3_service.classifier.runtime`. A logistic head on the reward
encoder's own embeddings (:mod:`~r3_service.classifier.head`) serves other encoders.
"""

from __future__ import annotations

from r3_service.classifier.head import (
    CONSTRAINED,
    HEAD_FILE,
    LABELS,
    OPENENDED,
    QTypeHead,
    load_head,
)

__all__ = ["CONSTRAINED", "HEAD_FILE", "LABELS", "OPENENDED", "QTypeHead", "load_head"]
