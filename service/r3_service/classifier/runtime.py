"""The classifier as the service runs it: ONNX Runtime, the engine's batcher, one cache.

Two kinds, both behind :class:`QueryClassifier`:

* ``finetuned`` -- a fine-tuned encoder (an ensemble of ONNX members, each followed
  by a linear head) in its own folder; it runs through its own ``EmbeddingEngine``
  (the same batcher, in-flight dedup and LRU cache as the reward encoder), so a
  query is classified once and later requests for it (a GRPO group, the next
  epoch) hit the cache.
* ``head`` -- a logistic head on the reward encoder's own query embedding
  (``qtype_head.json``), e.g. one a user trained for another encoder; it embeds the
  queries with the :class:`Embedder` the scorer passes (the reward engine).
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from r3_service.classifier.head import sigmoid
from r3_service.classifier.text import head_tail, plain_prompt
from r3_service.encoder.base import Encoder
from r3_service.encoder.profile import EncoderProfile

if TYPE_CHECKING:
    from r3_service.classifier.head import QTypeHead
    from r3_service.engine.batching import Batcher

logger = logging.getLogger(__name__)

#: Folder of a fine-tuned classifier inside a model folder, and its description file.
CLASSIFIER_DIR = "qtype"
CONFIG_FILE = "qtype_classifier.json"
FORMAT_VERSION = 2
#: Probabilities in [low, high) are "uncertain": scored by the blend rule (see decide.py).
DEFAULT_BAND = (0.35, 0.65)


class Embedder(Protocol):
    """What a classifier needs from the reward side: embeddings of texts (an
    ``EmbeddingEngine``)."""

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``, shape (n, dim)."""
        ...


class QueryClassifier(abc.ABC):
    """P(OPENENDED) for queries, a decision threshold and an abstain band."""

    kind: str = ""
    threshold: float = 0.5
    band: tuple[float, float] = DEFAULT_BAND
    source: str = ""
    metrics: dict[str, Any]
    #: A Prometheus counter labelled ``decision`` (OPENENDED, CONSTRAINED, uncertain), if any.
    counter: Any = None

    @abc.abstractmethod
    async def probabilities(self, queries: Sequence[str], embedder: Embedder) -> np.ndarray:
        """Calibrated P(OPENENDED) per query, float64 of shape (n,); ``embedder`` embeds
        with the reward encoder, for classifiers that use its embeddings."""

    def cost(self, queries: Sequence[str], chars_per_token: float) -> float:
        """A guess of the model work typing ``queries`` takes on the reward encoder's device,
        in the batcher's cost units (tokens plus a per-text overhead); 0 when that work
        goes through the reward engine's own queue."""
        return 0.0

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start background workers, if any."""

    def stop(self, timeout: float = 30.0) -> None:  # noqa: B027 - optional hook
        """Stop background workers, if any."""

    def workers(self) -> list[tuple[str, Batcher]]:
        """The classifier's own batchers (for readiness and metrics); none by default."""
        return []

    def cache_stats(self) -> tuple[int, int] | None:
        """(hits, misses) of the classifier's own per-query cache, if it has one."""
        return None

    def is_openended(self, proba: np.ndarray) -> np.ndarray:
        return np.asarray(proba) >= self.threshold

    def uncertain(self, proba: np.ndarray) -> np.ndarray:
        p = np.asarray(proba)
        return (p >= self.band[0]) & (p < self.band[1])

    def record(self, qtype: str, uncertain: bool) -> None:
        """Count one decision for an untyped item (and whether it fell in the band)."""
        if self.counter is not None:
            self.counter.labels(qtype).inc()
            if uncertain:
                self.counter.labels("uncertain").inc()

    def info(self) -> dict[str, Any]:
        """What /v1/info shows: the same on every replica serving the same files."""
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "abstain_band": list(self.band),
            "metrics": self.metrics,
        }


class EnsembleEncoder(Encoder):
    """Fine-tuned ONNX members -> mean logit of OPENENDED, as a 1-d "embedding"."""

    def __init__(self, folder: Path, config: dict[str, Any], **options: Any) -> None:
        from tokenizers import Tokenizer

        from r3_service.encoder import load_encoder

        self.folder = folder
        self.members = [load_encoder(folder / m, **options) for m in config["members"]]
        self.heads = [
            (np.asarray(h["weight"], dtype=np.float32), float(h["bias"])) for h in config["heads"]
        ]
        if len(self.heads) != len(self.members) or not self.members:
            raise ValueError(f"{folder}: {len(self.members)} members, {len(self.heads)} heads")
        first = self.members[0]
        self.max_length = int(config["max_length"])
        self.tokenizer = Tokenizer.from_file(
            str(folder / config["members"][0] / first.profile.tokenizer_file)
        )
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.profile = EncoderProfile(
            name=str(config.get("name", "qtype-classifier")),
            hidden_size=1,
            pad_token_id=first.profile.pad_token_id,
        )
        self.device = getattr(first, "device", "cpu")
        self.backend = str(getattr(first, "backend", "onnxruntime"))
        self.precision = str(getattr(first, "precision", first.profile.dtype))

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self.tokenizer.encode_batch([plain_prompt(t) for t in texts])
        return [np.asarray(head_tail(e.ids, self.max_length), dtype=np.int64) for e in encodings]

    def embed_tokens(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        logits = np.zeros(len(batch), dtype=np.float64)
        for member, (weight, bias) in zip(self.members, self.heads):
            logits += member.embed_tokens(batch).astype(np.float64) @ weight + bias
        return (logits / len(self.members)).astype(np.float32)[:, None]


class FineTunedClassifier(QueryClassifier):
    """An ensemble of fine-tuned encoders, served through its own engine (batcher + cache)."""

    kind = "finetuned"

    def __init__(
        self,
        folder: Path | str,
        *,
        cache_bytes: int = 16 << 20,
        request_timeout_s: float | None = None,
        **options: Any,
    ) -> None:
        from r3_service.engine import EmbeddingEngine, EngineConfig

        folder = Path(folder)
        config = read_config(folder)
        self.source = str(folder)
        self.adapter_sha256 = str(config.get("adapter_sha256", ""))
        self.temperature = float(config["temperature"])
        self.threshold = float(config.get("threshold", 0.5))
        self.band = (float(config["abstain_band"][0]), float(config["abstain_band"][1]))
        self.metrics = dict(config.get("metrics", {}))
        self.members = len(config["members"])
        self.encoder = EnsembleEncoder(folder, config, **options)
        self.engine = EmbeddingEngine(
            self.encoder,
            # The reward's batch limits (a small request waits for one short batch) and
            # deadline (no typing for a request that has given up).
            EngineConfig.for_device(
                self.encoder.device,
                cache_bytes=cache_bytes,
                request_timeout_s=request_timeout_s or EngineConfig.request_timeout_s,
            ),
        )

    def cost(self, queries: Sequence[str], chars_per_token: float) -> float:
        from r3_service.engine.scheduler import TEXT_OVERHEAD

        longest = self.encoder.max_length
        tokens = sum(min(int(len(q) / chars_per_token), longest) for q in queries)
        return float((tokens + TEXT_OVERHEAD * len(queries)) * self.members)

    def start(self) -> None:
        # A batch of typical size first, so ONNX Runtime's arenas are grown before requests.
        self.encoder.embed_tokens(self.encoder.tokenize(["Write a short poem about the sea."] * 32))
        self.engine.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.engine.stop(timeout)

    async def logits(self, queries: Sequence[str]) -> np.ndarray:
        """Uncalibrated mean member logits (cached per query)."""
        return np.asarray((await self.engine.embed(list(queries)))[:, 0], dtype=np.float64)

    async def probabilities(self, queries: Sequence[str], embedder: Embedder) -> np.ndarray:
        return sigmoid(await self.logits(queries) / self.temperature)

    def workers(self) -> list[tuple[str, Batcher]]:
        return [("query-type classifier", self.engine.batcher)]

    def cache_stats(self) -> tuple[int, int] | None:
        return self.engine.cache.hits, self.engine.cache.misses

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "members": self.members,
            "temperature": round(self.temperature, 4),
            "adapter_sha256": self.adapter_sha256,
            "backend": self.encoder.backend,
            "precision": self.encoder.precision,
        }


class HeadClassifier(QueryClassifier):
    """A logistic head on the reward encoder's query embedding (``qtype_head.json``)."""

    kind = "head"

    def __init__(self, head: QTypeHead, source: Path) -> None:
        self.head = head
        self.source = str(source)
        self.threshold = float(head.threshold)
        low, high = head.hyperparameters.get("abstain_band", DEFAULT_BAND)
        self.band = (float(low), float(high))
        self.metrics = dict(head.metrics)

    async def probabilities(self, queries: Sequence[str], embedder: Embedder) -> np.ndarray:
        vectors = await embedder.embed(list(queries))
        # The head's text features are regex work: off the event loop.
        proba = await asyncio.to_thread(self.head.predict_proba, vectors, list(queries))
        return np.asarray(proba, dtype=np.float64)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "encoder": self.head.encoder, **self.head.info()}


def read_config(folder: Path | str) -> dict[str, Any]:
    """The description file of a fine-tuned classifier folder (ValueError when unusable)."""
    path = Path(folder) / CONFIG_FILE
    data = json.loads(path.read_text())
    if data.get("format_version") != FORMAT_VERSION or data.get("kind") != "finetuned":
        raise ValueError(f"{path}: not a format-{FORMAT_VERSION} fine-tuned classifier")
    return dict(data)


def find_classifier(model_folder: Path, override: Path | None = None) -> Path | None:
    """Where the classifier for ``model_folder`` is: ``override``, else the folder's own.

    A fine-tuned classifier (``qtype/``) comes before a head (``qtype_head.json``).
    """
    from r3_service.classifier.head import HEAD_FILE

    if override is not None:
        return Path(override)
    for candidate in (model_folder / CLASSIFIER_DIR, model_folder / HEAD_FILE):
        if candidate.exists():
            return candidate
    return None


def require_classifier(model_folder: Path, override: Path | None = None) -> Path:
    """``find_classifier``, raising FileNotFoundError when there is none."""
    path = find_classifier(model_folder, override)
    if path is None:
        raise FileNotFoundError(
            f"no query-type classifier in {model_folder} (train one with r3-train-classifier, "
            "or set R3_CLASSIFIER)"
        )
    return path


def check_classifier(model_folder: Path, override: Path | None = None) -> Path:
    """Find and validate the classifier without opening ONNX sessions (raises if unusable)."""
    from r3_service.classifier.head import HEAD_FILE, load_head
    from r3_service.encoder.profile import PROFILE_FILE

    path = require_classifier(model_folder, override)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        config = read_config(path)
        for member in config["members"]:
            if not (path / member / PROFILE_FILE).is_file():
                raise FileNotFoundError(f"{path / member}: classifier member is not exported")
        return path
    head_path = path / HEAD_FILE if path.is_dir() else path
    profile = EncoderProfile.load(model_folder)
    load_head(head_path, encoder=profile.name, embedding_dim=profile.hidden_size or None)
    return head_path


def load_classifier(
    path: Path,
    reward_encoder: Encoder,
    request_timeout_s: float | None = None,
    **options: Any,
) -> QueryClassifier:
    """Open the classifier at ``path`` (a fine-tuned folder or a head file); raises if unusable."""
    from r3_service.classifier.head import HEAD_FILE, load_head

    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return FineTunedClassifier(path, request_timeout_s=request_timeout_s, **options)
    if path.is_dir() and (path / HEAD_FILE).is_file():
        path = path / HEAD_FILE
    if path.is_file():
        head = load_head(
            path, encoder=reward_encoder.profile.name, embedding_dim=reward_encoder.dim
        )
        return HeadClassifier(head, path)
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE} and no {HEAD_FILE}")
