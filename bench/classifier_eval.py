"""Final report of the shipped query-type classifier (run after bench/classifier_sweep.py).

* AlpacaFarm: held-out logits of the shipped configuration (``--af NPZ``: an array
  ``y`` and named logit arrays, e.g. the sweep's oof_logits.npz, 5-fold CV holding out
  whole task families, or one held-out fold), calibrated with the shipped temperature.
* Out-of-source: bench/data/qtype_handmade_ood.json (484 hand-labelled prompts,
  never used to train or choose anything), scored through the real serving path:
  the adapter merged into the bundled weights, exported to ONNX, run by ONNX Runtime.

Prints accuracy with a 95% bootstrap interval, the confusion matrix, ECE, the
abstain rate and per-subset accuracy; writes the reliability diagram (PNG) and a
JSON of the figures; with ``--write-adapter`` stores threshold, band and figures in
the adapter file's metadata (its tensors are unchanged).

    python bench/classifier_eval.py --af NPZ [--classifier BUILT_DIR] \
        [--png docs/img/qtype_reliability.png] [--write-adapter]
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

from r3_service.classifier.adapter import load_adapter, save_adapter
from r3_service.classifier.build import build_classifier, shipped_adapter_path
from r3_service.classifier.head import sigmoid
from r3_service.classifier.runtime import DEFAULT_BAND, EnsembleEncoder, read_config
from r3_service.classifier_training import calibration as C

ROOT = Path(__file__).resolve().parents[1]


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def plot(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], band: tuple[float, float], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=120)
    ax.axvspan(band[0], band[1], color="0.9", label=f"abstain band [{band[0]}, {band[1]})")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for (name, (p, y)), marker in zip(curves.items(), "os^"):
        bins = [b for b in C.reliability_bins(p, y) if b["n"] >= 5]
        ece = C.expected_calibration_error(p, y)
        ax.plot(
            [b["mean_proba"] for b in bins],
            [b["rate"] for b in bins],
            marker=marker,
            label=f"{name} (n={len(y)}, ECE {ece:.3f})",
        )
    ax.set_xlabel("predicted P(OPENENDED)")
    ax.set_ylabel("observed share OPENENDED")
    ax.set_title("Query-type classifier: reliability")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def subsets(rows: list[dict[str, Any]], correct: np.ndarray) -> dict[str, dict[str, float]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for row, ok in zip(rows, correct):
        groups[f"source:{row.get('source', '')}"].append(bool(ok))
        groups[f"form:{row.get('form', '')}"].append(bool(ok))
    return {
        k: {"n": len(v), "accuracy": round(float(np.mean(v)), 4)} for k, v in sorted(groups.items())
    }


def ood_probabilities(args: argparse.Namespace, texts: list[str], temperature: float) -> np.ndarray:
    """Calibrated P(OPENENDED) through the serving path (built classifier, ONNX Runtime)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.classifier
        if folder is None:
            from r3_service.models import bundled_model_dir

            folder = build_classifier(bundled_model_dir(), args.adapter, Path(tmp) / "qtype")
        encoder = EnsembleEncoder(folder, read_config(folder))
        return sigmoid(encoder.encode(texts)[:, 0].astype(np.float64) / temperature)


def ood_report(
    rows: list[dict[str, Any]],
    proba: np.ndarray,
    y: np.ndarray,
    threshold: float,
    band: tuple[float, float],
) -> dict[str, Any]:
    metrics = C.decision_metrics(proba, y, threshold, band)
    metrics["subsets"] = subsets(rows, (proba >= threshold) == y)
    return metrics


def write_adapter(
    args: argparse.Namespace, info: dict[str, Any], report: dict[str, Any], first: str
) -> None:
    """Store threshold, band and figures in the adapter's metadata (tensors unchanged)."""
    members, _ = load_adapter(args.adapter)
    keep = {k: v for k, v in info.items() if k != "members"}
    keep.update(
        threshold=args.threshold,
        abstain_band=list(DEFAULT_BAND),
        metrics={
            "alpacafarm_shifted_5fold_accuracy": report["alpacafarm_5fold_accuracy"],
            f"alpacafarm_{first}_calibration ({args.af_label})": report[f"alpacafarm_{first}"],
            "out_of_source": {k: v for k, v in report["out_of_source"].items() if k != "subsets"},
        },
    )
    save_adapter(args.adapter, members, keep)
    out(f"wrote threshold, band and figures into {args.adapter}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--af", type=Path, required=True, help="held-out AlpacaFarm logits (.npz)")
    parser.add_argument(
        "--af-temperature", type=float, default=None, help="for --af (default: the adapter's)"
    )
    parser.add_argument("--af-label", default="shipped configuration")
    parser.add_argument(
        "--sweep-json", type=Path, default=ROOT / "bench/results/classifier_sweep.json"
    )
    parser.add_argument("--ood", type=Path, default=ROOT / "bench/data/qtype_handmade_ood.json")
    parser.add_argument("--classifier", type=Path, default=None, help="built classifier folder")
    parser.add_argument("--adapter", type=Path, default=shipped_adapter_path())
    parser.add_argument("--png", type=Path, default=ROOT / "docs/img/qtype_reliability.png")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/classifier_eval.json")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--write-adapter", action="store_true")
    args = parser.parse_args()
    band = DEFAULT_BAND

    _, info = load_adapter(args.adapter)
    temperature = float(info["temperature"])
    held = np.load(args.af)
    y = held["y"]
    af_t = args.af_temperature or temperature
    af = {
        k: sigmoid(held[k] / af_t)
        for k in held.files
        if k not in ("y", "idx") and not k.startswith(("ood", "member"))
    }
    sweep = json.loads(args.sweep_json.read_text())
    chosen = sweep["configs"][sweep["chosen"]]
    report: dict[str, Any] = {
        "alpacafarm_5fold_accuracy": {
            k: v for k, v in chosen.items() if k == "shifted" or k.startswith("stress")
        },
        "af_label": args.af_label,
        "af_temperature": af_t,
        "temperature": temperature,
        "threshold": args.threshold,
        "abstain_band": list(band),
    }
    for name, p in af.items():
        report[f"alpacafarm_{name}"] = C.decision_metrics(p, y, args.threshold, band)

    first = next(iter(af))
    rows = json.loads(args.ood.read_text())
    ood_y = np.array([r["qtype"] == "OPENENDED" for r in rows], dtype=np.int64)
    ood_p = ood_probabilities(args, [r["input"] for r in rows], temperature)
    report["out_of_source"] = ood_report(rows, ood_p, ood_y, args.threshold, band)
    report["out_of_source_errors"] = [
        {"input": r["input"][:120], "qtype": r["qtype"], "p_openended": round(float(p), 3)}
        for r, p, ok in zip(rows, ood_p, (ood_p >= args.threshold) == ood_y)
        if not ok
    ]
    plot(
        {
            f"AlpacaFarm {first}, {args.af_label}": (af[first], y),
            "out-of-source set, shipped classifier": (ood_p, ood_y),
        },
        band,
        args.png,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    out(f"AlpacaFarm 5-fold accuracy, shipped configuration: {report['alpacafarm_5fold_accuracy']}")
    for key in [
        k for k in report if k.startswith("alpacafarm_") and "accuracy_ci95" in report[k]
    ] + ["out_of_source"]:
        m = report[key]
        low, high = m["accuracy_ci95"]
        out(
            f"{key:34s} acc {m['accuracy']:.3f} [{low:.3f}, {high:.3f}]  ECE {m['ece']:.3f}"
            f"  abstain {m['abstain_rate']:.3f}  confusion {m['confusion_matrix']}"
        )
    for name, m in report["out_of_source"]["subsets"].items():
        out(f"  {name:30s} n={m['n']:4d} acc {m['accuracy']:.3f}")
    if args.write_adapter:
        write_adapter(args, info, report, first)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
