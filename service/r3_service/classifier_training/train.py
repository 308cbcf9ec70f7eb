"""Train the logistic query-type head on an encoder's embeddings (numpy only).

``r3-train-classifier --head`` uses it; the shipped classifier is a fine-tuned
encoder instead (:mod:`r3_service.classifier_training.finetune`).

The head is an L2-regularised logistic regression on the standardised query
embedding plus the text features of :mod:`r3_service.classifier.features`, fitted
by Newton's method, with label-preserving augmentation (input-block formats,
chat-style phrasing) and a temperature fitted on out-of-fold logits of a split
that holds out whole task families (leading verbs).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from r3_service.classifier.features import FEATURE_NAMES, split_query, text_features
from r3_service.classifier.head import (
    LABELS,
    QTypeHead,
    prepare_embeddings,
    sigmoid,
)
from r3_service.classifier_training.augment import augment as text_augment
from r3_service.classifier_training.calibration import fit_temperature
from r3_service.classifier_training.splits import group_folds, random_folds, task_family

logger = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the head (chosen on the leading-verb shifted split)."""

    #: L2 penalty (per sample) on the standardised embedding weights.
    l2_embedding: float = 0.3
    #: L2 penalty (per sample) on the standardised text-feature weights.
    l2_features: float = 0.1
    embedding_norm: str = "l2"
    #: Augmented copies per training row, and their total weight relative to the row.
    augment_copies: int = 1
    augment_weight: float = 0.5
    folds: int = 5
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- augmentation ----------------------------------------------------------------------------

_INPUT_FORMATS = ("\nInput: ", "\n\nInput:\n", "\n\n", ":\n", ": ", "\n")
_CHAT_PREFIXES = (
    "Can you ", "Could you ", "Please ", "Could you please ", "I need you to ",
    "I'd like you to ", "hey, can you ", "Help me ", "",
)  # fmt: skip


_CONTEXTS = (
    "I have a question.", "This is for work.", "I'm preparing for a meeting.",
    "Here's what I need.", "Hello!", "I need some help.", "Thanks in advance.",
)  # fmt: skip


def _lcfirst(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def v1_rewrite(text: str, rng: random.Random) -> str:
    """The v1 head's label-preserving variant of ``text``: another input-block format
    and/or chat phrasing."""
    instruction, given = split_query(text)
    if rng.random() < 0.5 and not instruction.rstrip().endswith("?"):
        prefix = rng.choice(_CHAT_PREFIXES)
        body = instruction.rstrip().rstrip(".!")
        if prefix:
            body = prefix + _lcfirst(body)
            if prefix[0] in "Cc" or prefix.startswith("hey"):
                body += "?"
            elif rng.random() < 0.5:
                body += "."
        instruction = body
    if rng.random() < 0.25:
        instruction = instruction.lower()
    if rng.random() < 0.15:
        instruction = rng.choice(_CONTEXTS) + rng.choice((" ", "\n\n")) + instruction
    if given:
        sep = rng.choice(_INPUT_FORMATS)
        if sep.startswith(":"):
            instruction = instruction.rstrip(" .?:")
        return instruction + sep + given
    return instruction


def augment(texts: Sequence[str], copies: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """The v1 head's augmentation: ``text.augment`` with ``v1_rewrite``, dropping variants
    equal to the text itself (its published figures were measured so)."""
    return text_augment(texts, copies, seed, rewrite=v1_rewrite, same=str)


# -- fitting ---------------------------------------------------------------------------------


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    l2: np.ndarray,
    sample_weight: np.ndarray | None = None,
    max_iter: int = 50,
    tol: float = 1e-7,
) -> tuple[np.ndarray, float]:
    """Minimise mean weighted log-loss + 0.5 * sum(l2 * w**2) by Newton's method.

    ``l2`` holds one penalty per column; the intercept is not penalised.
    """
    n, d = x.shape
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    sw = sw / sw.sum()
    xa = np.hstack([x, np.ones((n, 1))])
    penalty = np.append(np.asarray(l2, dtype=np.float64), 0.0)
    theta = np.zeros(d + 1)
    yf = y.astype(np.float64)
    for _ in range(max_iter):
        z = xa @ theta
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        grad = xa.T @ (sw * (p - yf)) + penalty * theta
        hess = (xa * (sw * p * (1.0 - p))[:, None]).T @ xa + np.diag(penalty + 1e-10)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if float(np.max(np.abs(step))) < tol:
            break
    return theta[:-1], float(theta[-1])


@dataclass
class Dataset:
    """Design matrix rows of the original texts and of their augmented variants."""

    x: np.ndarray  # (n, d) raw inputs of the originals
    y: np.ndarray
    x_aug: np.ndarray  # (m, d) raw inputs of the variants
    y_aug: np.ndarray
    aug_source: np.ndarray  # (m,) index of each variant's original


def build_dataset(
    texts: Sequence[str], labels: np.ndarray, embed: EmbedFn, config: TrainConfig
) -> Dataset:
    """Embed texts (and augmented variants) once and build the raw design matrices."""
    variants, source = augment(texts, config.augment_copies, config.seed)
    all_texts = list(texts) + variants
    started = time.perf_counter()
    emb = np.asarray(embed(all_texts), dtype=np.float32)
    logger.info("embedded %d texts in %.1f s", len(all_texts), time.perf_counter() - started)
    x_all = np.hstack(
        [
            prepare_embeddings(emb, config.embedding_norm),
            text_features(all_texts).astype(np.float64),
        ]
    )
    n = len(texts)
    src = np.asarray(source, dtype=np.int64)
    return Dataset(x_all[:n], np.asarray(labels), x_all[n:], np.asarray(labels)[src], src)


def _penalties(dim: int, config: TrainConfig) -> np.ndarray:
    return np.concatenate(
        [np.full(dim, config.l2_embedding), np.full(len(FEATURE_NAMES), config.l2_features)]
    )


def fit_raw(
    data: Dataset, rows: np.ndarray, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Fit on the originals in ``rows`` and their variants: (mean, scale, coef, intercept)."""
    keep = np.isin(data.aug_source, rows)
    x = np.vstack([data.x[rows], data.x_aug[keep]])
    y = np.concatenate([data.y[rows], data.y_aug[keep]])
    n_aug = int(keep.sum())
    weight = np.concatenate(
        [
            np.ones(len(rows)),
            np.full(n_aug, config.augment_weight * len(rows) / max(n_aug, 1)),
        ]
    )
    mean = np.average(x, axis=0, weights=weight)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=weight))
    scale = np.where(scale < 1e-6, 1.0, scale)
    dim = data.x.shape[1] - len(FEATURE_NAMES)
    coef, intercept = fit_logistic((x - mean) / scale, y, _penalties(dim, config), weight)
    return mean, scale, coef, intercept


def cross_val_logits(data: Dataset, fold: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Out-of-fold logits of every original row."""
    out = np.zeros(len(data.y))
    for k in np.unique(fold):
        test = np.flatnonzero(fold == k)
        train = np.flatnonzero(fold != k)
        mean, scale, coef, intercept = fit_raw(data, train, config)
        out[test] = ((data.x[test] - mean) / scale) @ coef + intercept
    return out


def classification_metrics(
    y: np.ndarray, proba: np.ndarray, threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy, confusion matrix (rows = true, columns = predicted; labels order) and log-loss."""
    pred = (proba >= threshold).astype(np.int64)
    confusion = [[int(np.sum((y == t) & (pred == p))) for p in (0, 1)] for t in (0, 1)]
    eps = 1e-12
    logloss = -np.mean(y * np.log(proba + eps) + (1 - y) * np.log(1 - proba + eps))
    return {
        "accuracy": round(float(np.mean(pred == y)), 4),
        "confusion_matrix": confusion,
        "log_loss": round(float(logloss), 4),
        "n": int(len(y)),
    }


def train_head(
    texts: Sequence[str],
    labels: np.ndarray,
    embed: EmbedFn,
    *,
    encoder: str,
    config: TrainConfig | None = None,
    data_sha256: str = "",
) -> QTypeHead:
    """Train a head on all rows; metrics and temperature come from cross-validation.

    The shifted split holds out whole task families (leading verb / question word)
    per fold; the random split is stratified. Both are ``config.folds``-fold.
    """
    config = config or TrainConfig()
    labels = np.asarray(labels, dtype=np.int64)
    if len(texts) != len(labels):
        raise ValueError("texts and labels differ in length")
    if len(np.unique(labels)) < 2:
        raise ValueError("training data needs both OPENENDED and CONSTRAINED rows")
    started = time.perf_counter()
    data = build_dataset(texts, labels, embed, config)
    dim = data.x.shape[1] - len(FEATURE_NAMES)
    folds = max(2, min(config.folds, int(np.bincount(labels).min())))

    shifted = group_folds([task_family(t) for t in texts], folds)
    shifted_description = f"{folds}-fold CV, folds hold out whole leading-verb task families"
    if len(np.unique(shifted)) < 2:
        shifted = random_folds(labels, folds, config.seed + 1)
        shifted_description = f"{folds}-fold random CV (one task family only)"
    shifted_logits = cross_val_logits(data, shifted, config)
    temperature = fit_temperature(shifted_logits, labels)
    random_logits = cross_val_logits(data, random_folds(labels, folds, config.seed), config)
    metrics: dict[str, Any] = {
        "labels": list(LABELS),
        "shifted_split": {
            "description": shifted_description,
            **classification_metrics(labels, sigmoid(shifted_logits / temperature)),
        },
        "random_split": {
            "description": f"{folds}-fold stratified random CV",
            **classification_metrics(labels, sigmoid(random_logits / temperature)),
        },
    }

    mean, scale, coef, intercept = fit_raw(data, np.arange(len(labels)), config)
    elapsed = time.perf_counter() - started
    metrics["train_seconds"] = round(elapsed, 1)
    logger.info(
        "trained head: shifted %.3f random %.3f T=%.2f in %.1f s",
        metrics["shifted_split"]["accuracy"],
        metrics["random_split"]["accuracy"],
        temperature,
        elapsed,
    )
    return QTypeHead(
        encoder=encoder,
        embedding_dim=dim,
        mean=mean,
        scale=scale,
        coef=coef,
        intercept=intercept,
        temperature=temperature,
        threshold=0.5,
        embedding_norm=config.embedding_norm,
        data_sha256=data_sha256,
        metrics=metrics,
        hyperparameters=config.to_json() | {"n_train": int(len(labels))},
    )


# -- encoders for the CLI --------------------------------------------------------------------


def reference_embedder(model_dir: Path | str, batch_size: int = 32) -> EmbedFn:
    """Mean-pooled last hidden states via torch/transformers (left truncation, 512 tokens).

    The same math as the service's encoder, for training without an exported folder.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.truncation_side = "left"
    model = AutoModel.from_pretrained(str(model_dir)).eval()

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=512,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        if not out:
            return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    return embed
