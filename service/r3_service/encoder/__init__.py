"""Sentence encoders: profiles, ONNX export, inference (ONNX Runtime or OpenVINO)."""

from __future__ import annotations

from pathlib import Path

from r3_service.encoder.base import Encoder, mean_pool, pad_batch, relevance
from r3_service.encoder.profile import PROFILE_FILE, EncoderProfile


def check_backend_choice(backend: str, precision: str, provider: str) -> None:
    """Raise ValueError unless ``backend`` can run ``precision`` on ``provider``."""
    if backend not in ("onnxruntime", "openvino"):
        raise ValueError(f"unknown backend {backend!r}: onnxruntime or openvino")
    if backend == "onnxruntime" and precision != "fp32":
        raise ValueError(
            f"{precision} needs the openvino backend (R3_BACKEND=openvino); "
            "ONNX Runtime runs the export's own dtype"
        )
    if backend == "openvino" and provider == "cuda":
        raise ValueError("the openvino backend runs on the CPU; R3_PROVIDER=cuda needs onnxruntime")


def load_encoder(
    folder: Path | str,
    *,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    provider: str = "auto",
    intra_op_threads: int = 0,
    **kwargs: object,
) -> Encoder:
    """Open an exported model folder with ``backend``: ``onnxruntime`` (``OrtEncoder``: CPU
    or CUDA, by ``provider``; fp32 only) or ``openvino`` (``OpenVinoEncoder``: CPU, fp32 or
    bf16)."""
    check_backend_choice(backend, precision, provider)
    if backend == "openvino":
        from r3_service.encoder.openvino import OpenVinoEncoder

        return OpenVinoEncoder(
            folder,
            precision=precision,  # type: ignore[arg-type]
            intra_op_threads=intra_op_threads,
        )
    from r3_service.encoder.ort import OrtEncoder

    return OrtEncoder(
        folder,
        provider=provider,  # type: ignore[arg-type]
        intra_op_threads=intra_op_threads,
        **kwargs,  # type: ignore[arg-type]
    )


__all__ = [
    "PROFILE_FILE",
    "Encoder",
    "EncoderProfile",
    "check_backend_choice",
    "load_encoder",
    "mean_pool",
    "pad_batch",
    "relevance",
]
