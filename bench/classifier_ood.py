"""Accuracy of the shipped query-type classifier on hand-labelled out-of-source sets.

Scores each set through the serving path (the adapter merged into the bundled weights,
exported to ONNX, run by ONNX Runtime; or ``--classifier`` a built folder), with the shipped
temperature, threshold and abstain band. Prints, per set: accuracy with its 95% bootstrap
interval, the confusion matrix, the abstain rate and the accuracy outside the band, and the
accuracy by prompt form and true type.

    python bench/classifier_ood.py [--ood bench/data/qtype_handmade_ood_v3.json ...]
        [--classifier BUILT_DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from r3_service.classifier.build import build_classifier, shipped_adapter_path
from r3_service.classifier.head import sigmoid
from r3_service.classifier.runtime import EnsembleEncoder, read_config
from r3_service.classifier_training import calibration as C

ROOT = Path(__file__).resolve().parents[1]
SETS = [ROOT / "bench/data/qtype_handmade_ood.json", ROOT / "bench/data/qtype_handmade_ood_v3.json"]


def by_form(rows: list[dict[str, Any]], correct: np.ndarray) -> dict[str, dict[str, float]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for row, ok in zip(rows, correct):
        groups[f"{row.get('form', '')} {row['qtype']}"].append(bool(ok))
    return {
        k: {"n": len(v), "accuracy": round(float(np.mean(v)), 3)} for k, v in sorted(groups.items())
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ood", type=Path, action="append", help="a set (repeatable)")
    parser.add_argument("--classifier", type=Path, help="built classifier folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.classifier
        if folder is None:
            from r3_service.models import bundled_model_dir

            folder = build_classifier(bundled_model_dir(), shipped_adapter_path(), Path(tmp) / "q")
        config = read_config(folder)
        encoder = EnsembleEncoder(folder, config)
        temperature = float(config["temperature"])
        threshold = float(config.get("threshold", 0.5))
        band = (float(config["abstain_band"][0]), float(config["abstain_band"][1]))
        for path in args.ood or SETS:
            rows = json.loads(path.read_text(encoding="utf-8"))
            y = np.array([r["qtype"] == "OPENENDED" for r in rows], dtype=np.int64)
            logits = encoder.encode([r["input"] for r in rows])[:, 0].astype(np.float64)
            proba = sigmoid(logits / temperature)
            metrics = C.decision_metrics(proba, y, threshold, band)
            metrics["by_form"] = by_form(rows, (proba >= threshold) == y)
            report[path.name] = metrics
            out = [
                f"{path.name}: n {metrics['n']}, accuracy {metrics['accuracy']} "
                f"{metrics['accuracy_ci95']}, confusion (rows true C/O) "
                f"{metrics['confusion_matrix']}, abstain {metrics['abstain_rate']}, "
                f"outside the band {metrics['accuracy_outside_band']}"
            ]
            out += [
                f"    {k:28} n {v['n']:4}  {v['accuracy']:.3f}"
                for k, v in metrics["by_form"].items()
            ]
            sys.stdout.write("\n".join(out) + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
