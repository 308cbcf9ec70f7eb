"""Service settings, read from the environment with the ``R3_`` prefix.

``python -m r3_service.config`` prints the settings table of docs/configuration.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from r3_service.encoder import check_backend_choice
from r3_service.engine.config import (
    CPU_BATCH_SIZE,
    CPU_BATCH_TOKENS,
    DEFAULT_CACHE_BYTES,
    DEFAULT_MAX_QUEUE_TEXTS,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_REQUEST_TIMEOUT_S,
    GPU_BATCH_SIZE,
    GPU_BATCH_TOKENS,
    HUNG_BATCH_SHARE,
    EngineConfig,
    batch_limits,
)


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
        default="auto",
        description="ONNX Runtime execution provider; auto takes CUDA (with io-binding) when "
        "present.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="CPU threads of inference; 0 = the CPUs this process may use."
    )
    backend: Literal["onnxruntime", "openvino"] = Field(
        default="onnxruntime",
        description="Inference engine: onnxruntime (CPU or CUDA, see R3_PROVIDER) or openvino "
        "(CPU only; the `openvino` extra). Both read the same exported model.onnx.",
    )
    inference_precision: Literal["fp32", "bf16"] = Field(
        default="fp32",
        description="fp32 keeps rewards exact; bf16 (R3_BACKEND=openvino, CPUs with bf16 "
        "units only: refused at start elsewhere) is faster and changes rewards slightly.",
    )
    classifier_backend: Literal["onnxruntime", "openvino"] | None = Field(
        default=None,
        description="Inference engine of the query-type classifier; unset: R3_BACKEND.",
    )
    classifier_precision: Literal["fp32", "bf16"] | None = Field(
        default=None,
        description="Precision of the query-type classifier; unset: R3_INFERENCE_PRECISION.",
    )
    max_batch_tokens: int | None = Field(
        default=None,
        ge=64,
        description="Token budget of one batch (size x padded length); unset: "
        f"{CPU_BATCH_TOKENS} on CPU, {GPU_BATCH_TOKENS} on GPU.",
    )
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description=f"Most texts in one batch; unset: {CPU_BATCH_SIZE} on CPU, "
        f"{GPU_BATCH_SIZE} on GPU.",
    )
    max_wait_ms: float = Field(
        default=DEFAULT_MAX_WAIT_MS, ge=0, le=1000, description="How long a batch may wait to fill."
    )
    max_queue_texts: int = Field(
        default=DEFAULT_MAX_QUEUE_TEXTS,
        ge=1,
        description="Texts queued at most; beyond, requests get 503 (a request needing more "
        "texts than this at once gets 413).",
    )
    cache_bytes: int = Field(
        default=DEFAULT_CACHE_BYTES, ge=0, description="Size of the query/reference embedding LRU."
    )
    request_timeout_s: float = Field(
        default=DEFAULT_REQUEST_TIMEOUT_S,
        gt=0,
        description="Deadline of one request, from its arrival; past it the answer is 504. "
        "Requests that cannot finish before it are refused at once (503 + Retry-After).",
    )
    hung_batch_s: float | None = Field(
        default=None,
        gt=0,
        description="A batch running longer than this is hung: /readyz turns red and "
        f"r3_hung_batches_total counts it; unset: {HUNG_BATCH_SHARE:g} x the request timeout.",
    )
    max_connections: int = Field(
        default=2048,
        ge=16,
        description="Open HTTP connections at most; beyond, the oldest idle one is closed, "
        "or the new one when none is idle (lowered to fit the open-file limit).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Time a connection has to send a request's headers (from connecting, or "
        "from the previous answer); past it the connection is closed (408 if it sent a part).",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="Time to send a request body; past it: 408, closed."
    )
    keep_alive_s: float = Field(
        default=5.0, gt=0, description="An idle keep-alive connection is closed after this."
    )
    max_header_bytes: int = Field(
        default=65536, ge=1024, description="Request line and headers at most (larger: 431)."
    )
    max_json_depth: int = Field(
        default=32, ge=4, description="Nesting of arrays and objects in a body (deeper: 400)."
    )
    max_items_per_request: int = Field(default=512, ge=1, description="Items in one request.")
    max_item_elements: int = Field(
        default=256,
        ge=1,
        description="Elements of a list or object inside one item: a chat's messages, a "
        "label's elements (more: 422, before the body is parsed).",
    )
    max_json_values: int = Field(
        default=32_768,
        ge=64,
        description="JSON values (strings, numbers, lists, objects...) in one body (more: 413, "
        "before it is parsed): parsing and validation hold the event loop, and this keeps them "
        "within tens of milliseconds.",
    )
    max_chars_per_text: int = Field(
        default=50_000, ge=1, description="Characters in one text (longer: 422)."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Request body size (larger: 413)."
    )
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys; when set, every route but /healthz and /readyz "
        "(and /metrics, unless R3_METRICS_AUTH) needs 'Authorization: Bearer KEY'.",
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

    @model_validator(mode="after")
    def _backend_fits(self) -> Settings:
        for classifier, names in (
            (False, "R3_BACKEND, R3_INFERENCE_PRECISION"),
            (True, "R3_CLASSIFIER_BACKEND, R3_CLASSIFIER_PRECISION"),
        ):
            options = self.encoder_options(classifier)
            try:
                check_backend_choice(options["backend"], options["precision"], self.provider)
            except ValueError as exc:
                raise ValueError(f"{names}: {exc}") from None
        return self

    def encoder_options(self, classifier: bool = False) -> dict[str, Any]:
        """What ``load_encoder`` takes from these settings (``classifier``: for the
        query-type classifier's own encoders)."""
        backend, precision = self.backend, self.inference_precision
        if classifier:
            backend = self.classifier_backend or backend
            precision = self.classifier_precision or precision
        return {
            "backend": backend,
            "precision": precision,
            "provider": self.provider,
            "intra_op_threads": self.intra_op_threads,
        }

    def batch_limits(self, device: str) -> tuple[int, int]:
        """(max_batch_tokens, max_batch_size), filling unset ones with the device's defaults."""
        return batch_limits(device, self.max_batch_tokens, self.max_batch_size)

    def engine_config(self, device: str) -> EngineConfig:
        """The engine knobs these settings give on ``device``."""
        return EngineConfig.for_device(
            device,
            self.max_batch_tokens,
            self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            max_queue_texts=self.max_queue_texts,
            cache_bytes=self.cache_bytes,
            request_timeout_s=self.request_timeout_s,
            hung_batch_s=self.hung_batch_s,
        )

    def warnings(self) -> list[str]:
        """Settings that make some requests impossible (logged at start)."""
        found = []
        if self.max_queue_texts < 2 * self.max_items_per_request:
            found.append(
                f"R3_MAX_QUEUE_TEXTS={self.max_queue_texts} is less than the texts of one full "
                f"request (2 x R3_MAX_ITEMS_PER_REQUEST={self.max_items_per_request}): such "
                "requests get 413"
            )
        return found

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]


#: Defaults computed when the settings are read, as the table shows them.
_SHOWN_DEFAULTS = {"cache_dir": "`~/.cache/r3` (`$XDG_CACHE_HOME/r3` when that is set)"}


def _shown_default(name: str, value: Any) -> str:
    if name in _SHOWN_DEFAULTS:
        return _SHOWN_DEFAULTS[name]
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def settings_table() -> str:
    """The Markdown table of every setting (variable, default, meaning) in docs/configuration.md.

    Made from the ``Settings`` fields alone; a test keeps the page in sync with it.
    """
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None and name not in _SHOWN_DEFAULTS:
            raise KeyError(f"{name}: say in _SHOWN_DEFAULTS how its computed default reads")
        default = _shown_default(name, field.get_default(call_default_factory=False))
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `R3_{name.upper()}` | {default} | {meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m r3_service.config: the settings table of the docs
    import sys

    sys.stdout.write(settings_table() + "\n")
