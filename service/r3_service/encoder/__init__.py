"""Sentence encoders: profiles, ONNX export, ONNX Runtime inference."""

from __future__ import annotations

from pathlib import Path

from r3_service.encoder.base import Encoder, mean_pool, pad_batch, relevance
from r3_service.encoder.profile import PROFILE_FILE, EncoderProfile


def load_encoder(folder: Path | str, **kwargs: object) -> Encoder:
    """Load an exported model folder with ONNX Runtime (see ``OrtEncoder`` for options)."""
    from r3_service.encoder.ort import OrtEncoder

    return OrtEncoder(folder, **kwargs)  # type: ignore[arg-type]


__all__ = [
    "PROFILE_FILE",
    "Encoder",
    "EncoderProfile",
    "load_encoder",
    "mean_pool",
    "pad_batch",
    "relevance",
]
