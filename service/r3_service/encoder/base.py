"""The encoder interface the engine batches for."""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from r3_service.encoder.profile import EncoderProfile


class Encoder(abc.ABC):
    """Turns token-id sequences into mean-pooled sentence embeddings.

    Tokenisation and inference are separate so that the batcher can cut batches
    by token count before any inference runs.
    """

    profile: EncoderProfile

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text (special tokens included, truncated on the left)."""

    @abc.abstractmethod
    def embed_tokens(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """Mean-pooled embeddings, float32 of shape (len(batch), hidden)."""

    @property
    def dim(self) -> int:
        return self.profile.hidden_size

    def warmup(self) -> None:
        """Run one tiny batch so the first request pays no start-up cost."""
        self.embed_tokens(self.tokenize(["warm up"]))

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed ``texts`` directly, in length-sorted batches (no engine, no cache)."""
        ids = self.tokenize(texts)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.embed_tokens([ids[i] for i in chunk])
        return out


class ExportedEncoder(Encoder):
    """An exported model folder (``r3-export``): its profile, its tokenizer, and the inputs
    and pooling of its ``model.onnx``, whichever backend runs it."""

    def __init__(self, folder: Path | str) -> None:
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.profile = EncoderProfile.load(self.folder)
        self.tokenizer = Tokenizer.from_file(str(self.folder / self.profile.tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(
            max_length=self.profile.max_length, direction=self.profile.truncation
        )

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def inputs(
        self, batch: Sequence[np.ndarray], names: Collection[str]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The model's inputs for ``batch`` (``names``: those the graph has), and the mask."""
        input_ids, mask = pad_batch(batch, self.profile.pad_token_id)
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return feeds, mask

    @staticmethod
    def pooled(output: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Exports end with the pooled ``sentence_embedding``; older ones give hidden states."""
        if output.ndim == 2:
            return np.asarray(output, dtype=np.float32)
        return mean_pool(output, mask)


def pad_batch(batch: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``batch`` to its longest member: (input_ids, attention_mask), int64."""
    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``hidden`` (batch, seq, dim) over positions where ``mask`` is 1."""
    weights = mask.astype(np.float32)[:, :, None]
    summed = (hidden.astype(np.float32) * weights).sum(axis=1)
    counts = np.maximum(weights.sum(axis=1), 1.0)
    return (summed / counts).astype(np.float32)


def relevance(anchors: np.ndarray, texts: np.ndarray, similarity: str) -> np.ndarray:
    """Row-wise similarity of two (n, dim) arrays: dot product or cosine."""
    a = anchors.astype(np.float64)
    b = texts.astype(np.float64)
    dots = np.einsum("ij,ij->i", a, b)
    if similarity == "dot":
        return dots
    if similarity == "cosine":
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return dots / np.maximum(norms, 1e-12)
    raise ValueError(f"unknown similarity {similarity!r}")
