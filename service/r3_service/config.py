"""Service settings, read from the environment with the ``R3_`` prefix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "r3"


class Settings(BaseSettings):
    """Every knob of the service; ``R3_<NAME>`` in the environment sets ``<name>``."""

    model_config = SettingsConfigDict(env_prefix="R3_", env_file=None, extra="ignore")

    model: Path | None = Field(
        default=None, description="Exported model folder; unset serves the embedded default."
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Where the embedded default model is exported on first start.",
    )
    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind.")
    provider: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="ONNX Runtime execution provider."
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime CPU threads; 0 = the CPUs this process may use."
    )
    max_batch_tokens: int | None = Field(
        default=None,
        ge=64,
        description="Token budget of one batch (size x padded length); unset: 1024 on CPU, "
        "16384 on GPU.",
    )
    max_batch_size: int | None = Field(
        default=None, ge=1, description="Most texts in one batch; unset: 32 on CPU, 128 on GPU."
    )
    max_wait_ms: float = Field(
        default=2.0, ge=0, le=1000, description="How long a batch may wait to fill."
    )
    max_queue_texts: int = Field(
        default=4096, ge=1, description="Texts queued at most; beyond, requests get 503."
    )
    cache_bytes: int = Field(
        default=64 * 1024 * 1024, ge=0, description="Size of the query/reference embedding LRU."
    )
    request_timeout_s: float = Field(
        default=60.0, gt=0, description="Deadline of one request; past it the answer is 504."
    )
    max_items_per_request: int = Field(default=512, ge=1, description="Items in one request.")
    max_chars_per_text: int = Field(
        default=50_000, ge=1, description="Characters in one text (longer: 422)."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Request body size (larger: 413)."
    )
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys; when set, requests need 'Bearer KEY' auth.",
    )
    metrics_auth: bool = Field(
        default=False, description="Require an API key for /metrics too (when keys are set)."
    )
    cors_origins: str = Field(
        default="", description="Comma-separated origins allowed by CORS; empty turns CORS off."
    )
    log_level: str = Field(default="info", description="Logging level.")
    classifier: Path | None = Field(
        default=None,
        description="Query-type classifier: a fine-tuned classifier folder or a head file; "
        "unset: the model folder's own (qtype/ or qtype_head.json).",
    )
    allow_no_classifier: bool = Field(
        default=False,
        description="Start even when no query-type classifier loads; untyped items are then "
        "scored as OPENENDED. Off: the service refuses to start without one.",
    )

    def batch_limits(self, device: str) -> tuple[int, int]:
        """(max_batch_tokens, max_batch_size), filling unset ones with the device's defaults.

        Measured on a 2-core CPU with MiniLM over HTTP: budgets of 512-1024 tokens gave
        about 30% more items/s than 4096 and 16384 (smaller activations stay in cache);
        GPUs want large batches.
        """
        tokens, size = (16384, 128) if device == "cuda" else (1024, 32)
        return self.max_batch_tokens or tokens, self.max_batch_size or size

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]
