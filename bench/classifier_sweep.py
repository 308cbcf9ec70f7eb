"""Fine-tune the query-type classifier: compare configurations, then train the shipped one.

Every configuration is scored by 5-fold cross-validation on AlpacaFarm's shifted
split (folds hold out whole task families, the leading verb or question word),
on the same validation folds rewritten four ways (``--stress`` rewrites of
bench/classifier_baselines.py: chat opener, inline input, lower case without
punctuation, a context sentence first; phrases the training augmentation does
not use), and, for the report only, on the out-of-source set
bench/data/qtype_handmade_ood.json. The shipped configuration is chosen by a rule
fixed before any run: the LoRA configuration with the best mean of the shifted
split and the four stress splits. The out-of-source set never chooses anything.

The chosen configuration is then trained ``--members`` times on all 2,000
prompts (seeds 0..K-1) and cross-validated as an ensemble; the first ``--ship``
members go into the adapter file (``--out``), with a temperature fitted on their
out-of-fold logits. The shipped adapter keeps one member (serving cost; see
bench/classifier_single.py for how its temperature was set from the first run).

    python bench/classifier_sweep.py --base MINILM_DIR --out DIR [--quick]

Runs on a GPU when torch sees one (bf16 autocast), else on CPU (slow: minutes
per model on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classifier_baselines import STRESS  # noqa: E402

import r3_service.classifier_training.finetune as F  # noqa: E402
from r3_service.classifier.adapter import save_adapter  # noqa: E402
from r3_service.classifier_training import calibration as C  # noqa: E402
from r3_service.classifier_training.splits import group_folds, load_rows, task_family  # noqa: E402
from r3_service.data import ALPACAFARM_QTYPE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CONFIGS: dict[str, F.FinetuneConfig] = {
    "lora, no augmentation": F.FinetuneConfig(augment_copies=0),
    "lora, augmentation x1": F.FinetuneConfig(augment_copies=1),
    "lora, augmentation x2": F.FinetuneConfig(augment_copies=2, epochs=3),
    "full fine-tune, no augmentation": F.FinetuneConfig(
        full=True, lr=5e-5, head_lr=1e-3, augment_copies=0
    ),
    "full fine-tune, augmentation x1": F.FinetuneConfig(full=True, lr=5e-5, head_lr=1e-3),
}


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def evaluate_folds(
    texts: list[str],
    y: np.ndarray,
    folds: np.ndarray,
    stress: dict[str, list[str]],
    ood: list[str],
    base: Path,
    config: F.FinetuneConfig,
) -> dict[str, np.ndarray]:
    """Out-of-fold logits on the shifted split and its rewrites; mean OOD logits over folds."""
    logits = {"shifted": np.zeros(len(y)), **{k: np.zeros(len(y)) for k in stress}}
    ood_logits = np.zeros(len(ood))
    for k in np.unique(folds):
        train = np.flatnonzero(folds != k)
        test = np.flatnonzero(folds == k)
        model = F.train_model([texts[i] for i in train], y[train], base, config)
        logits["shifted"][test] = F.predict_logits(model, [texts[i] for i in test], base, config)
        for name, rewritten in stress.items():
            chunk = [rewritten[i] for i in test]
            logits[name][test] = F.predict_logits(model, chunk, base, config)
        ood_logits += F.predict_logits(model, ood, base, config) / len(np.unique(folds))
    logits["ood (fold models)"] = ood_logits
    return logits


def summarize(y: np.ndarray, ood_y: np.ndarray, logits: dict[str, np.ndarray]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, z in logits.items():
        target = ood_y if name.startswith("ood") else y
        row[name] = round(float(np.mean((z > 0) == target)), 4)
    stress_names = [k for k in logits if k.startswith("stress:")]
    row["selection score"] = round(
        float(np.mean([row["shifted"], np.mean([row[k] for k in stress_names])])), 4
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="base encoder (HF folder)")
    parser.add_argument("--data", type=Path, default=ALPACAFARM_QTYPE)
    parser.add_argument("--ood", type=Path, default=ROOT / "bench/data/qtype_handmade_ood.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--members", type=int, default=3, help="members trained and evaluated")
    parser.add_argument("--ship", type=int, default=1, help="members kept in the adapter")
    parser.add_argument("--configs", default="", help="comma-separated subset of the names")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (CPU check)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    texts, y = load_rows(args.data)
    ood_rows = json.loads(args.ood.read_text())
    ood = [r["input"] for r in ood_rows]
    ood_y = np.array([r["qtype"] == "OPENENDED" for r in ood_rows], dtype=np.int64)
    configs = dict(CONFIGS)
    if args.configs:
        configs = {k: v for k, v in configs.items() if k in args.configs.split(",")}
    if args.quick:
        keep = np.r_[np.flatnonzero(y == 0)[:24], np.flatnonzero(y == 1)[:24]]
        texts, y = [texts[i] for i in keep], y[keep]
        ood, ood_y = ood[:20], ood_y[:20]
        configs = {
            k: dataclasses.replace(v, epochs=1, batch_size=16) for k, v in list(configs.items())[:2]
        }
        args.members = 2
    folds = group_folds([task_family(t) for t in texts], 5 if not args.quick else 2)
    stress: dict[str, list[str]] = {}
    for name, rewrite in STRESS.items():
        rng = random.Random(1)
        stress[f"stress:{name}"] = [rewrite(t, rng) for t in texts]

    results: dict[str, Any] = {"configs": {}, "n_train": len(y), "n_ood": len(ood)}
    all_logits: dict[str, dict[str, np.ndarray]] = {}
    for name, config in configs.items():
        t0 = time.perf_counter()
        all_logits[name] = evaluate_folds(texts, y, folds, stress, ood, args.base, config)
        row = summarize(y, ood_y, all_logits[name])
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results["configs"][name] = {"config": config.to_json(), **row}
        out(f"{name:36s} {json.dumps(row)}")
        (args.out / "sweep.json").write_text(json.dumps(results, indent=1))

    lora = {k: v for k, v in results["configs"].items() if not v["config"]["full"]}
    chosen = max(lora, key=lambda k: lora[k]["selection score"])
    config = configs[chosen]
    results["chosen"] = chosen
    out(f"chosen by the AlpacaFarm rule: {chosen}")

    # Final members on all rows (seeds 0..K-1), saved as the adapter file.
    members, ood_member_logits = [], []
    for seed in range(args.members):
        cfg = dataclasses.replace(config, seed=seed)
        model = F.train_model(texts, y, args.base, cfg)
        members.append(F.adapter_tensors(model))
        ood_member_logits.append(F.predict_logits(model, ood, args.base, cfg))
    np.save(args.out / "ood_member_logits.npy", np.array(ood_member_logits))
    info = {
        "base": "all-MiniLM-L6-v2",
        "config": config.to_json(),
        "lora_rank": config.lora_rank,
        "lora_alpha": config.lora_alpha,
        "max_length": config.max_length,
        "temperature": C.fit_temperature(all_logits[chosen]["shifted"], y),
        "selection": chosen,
    }
    save_adapter(args.out / "adapter.safetensors", members[: args.ship], info)  # redone below

    # Ensemble out-of-fold logits: seeds 1..K-1 of the chosen configuration on the same folds.
    member_oof = [all_logits[chosen]]
    for seed in range(1, args.members):
        cfg = dataclasses.replace(config, seed=seed)
        member_oof.append(evaluate_folds(texts, y, folds, stress, ood, args.base, cfg))
        ens = {k: np.mean([m[k] for m in member_oof], axis=0) for k in member_oof[0]}
        row = summarize(y, ood_y, ens)
        results[f"ensemble of {len(member_oof)}"] = row
        out(f"ensemble of {len(member_oof)} (chosen config) {json.dumps(row)}")
    ens = {k: np.mean([m[k] for m in member_oof], axis=0) for k in member_oof[0]}
    per_member = {f"member{k}_shifted": m["shifted"] for k, m in enumerate(member_oof)}
    arrays = {k.replace(":", "_"): v for k, v in ens.items()}
    arrays.update(per_member)
    np.savez(args.out / "oof_logits.npz", y=y, **arrays)
    shipped = np.mean([m["shifted"] for m in member_oof[: args.ship]], axis=0)
    temperature = C.fit_temperature(shipped, y)
    info["temperature"] = temperature
    info["sweep_seconds"] = round(time.perf_counter() - started, 1)
    members = members[: args.ship]
    save_adapter(args.out / "adapter.safetensors", members, info)
    results["temperature"] = temperature
    (args.out / "sweep.json").write_text(json.dumps(results, indent=1))
    out(f"temperature {temperature:.3f}; done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
