"""Keep one member of the swept ensemble as the shipped classifier, with its temperature.

The serving cost of an ensemble grows with its size (one encoder pass per member per
new query), and the 3-member ensemble missed the GRPO throughput target
(bench/bench_classifier.py) for +0.45 points on AlpacaFarm's shifted split. This keeps
member 0 (seed 0). Its temperature transfers the ensemble's out-of-fold calibration by
the ratio of logit spreads: T_1 = T_ens * std(z_0) / std(mean_k z_k), the spreads
measured on the 2,000 AlpacaFarm prompts through the ONNX path. (The sweep this adapter
came from stored only the ensemble's out-of-fold logits; bench/classifier_sweep.py now
stores each member's, so a rerun fits T_1 on member 0's own out-of-fold logits.)

    python bench/classifier_single.py --adapter ADAPTER --data alpacafarm_qtype.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from r3_service.classifier.adapter import load_adapter, save_adapter
from r3_service.classifier.build import build_classifier, shipped_adapter_path
from r3_service.classifier.runtime import EnsembleEncoder, read_config
from r3_service.classifier_training.splits import load_rows
from r3_service.data import ALPACAFARM_QTYPE

ROOT = Path(__file__).resolve().parents[1]


def member_logits(folder: Path, texts: list[str]) -> np.ndarray:
    """(members, n) logits of every member of a built classifier."""
    encoder = EnsembleEncoder(folder, read_config(folder))
    ids = encoder.tokenize(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(encoder.members), len(texts)))
    for start in range(0, len(order), 32):
        chunk = order[start : start + 32]
        batch = [ids[i] for i in chunk]
        for k, (member, (weight, bias)) in enumerate(zip(encoder.members, encoder.heads)):
            out[k, chunk] = member.embed_tokens(batch).astype(np.float64) @ weight + bias
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", type=Path, default=shipped_adapter_path())
    parser.add_argument("--data", type=Path, default=ALPACAFARM_QTYPE)
    parser.add_argument("--classifier", type=Path, default=None, help="built classifier folder")
    parser.add_argument("--logits", type=Path, default=None, help="cached member logits (.npy)")
    parser.add_argument("--out", type=Path, default=None, help="default: overwrite --adapter")
    args = parser.parse_args()
    members, info = load_adapter(args.adapter)
    if args.logits is not None and args.logits.is_file():
        z = np.load(args.logits)
    else:
        texts, _ = load_rows(args.data)
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.classifier
            if folder is None:
                from r3_service.models import bundled_model_dir

                folder = build_classifier(bundled_model_dir(), args.adapter, Path(tmp) / "q")
            z = member_logits(folder, texts)
    ratio = float(z[0].std() / z.mean(axis=0).std())
    temperature = float(info["temperature"]) * ratio
    keep = {k: v for k, v in info.items() if k != "members"}
    keep.update(
        temperature=temperature,
        temperature_source=(
            f"ensemble of {len(members)}: T {info['temperature']:.4f} fitted on out-of-fold "
            f"logits, times the spread ratio {ratio:.4f} of member 0 to the ensemble mean"
        ),
        ensemble_of=len(members),
    )
    save_adapter(args.out or args.adapter, members[:1], keep)
    sys.stdout.write(json.dumps({"ratio": ratio, "temperature": temperature}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
