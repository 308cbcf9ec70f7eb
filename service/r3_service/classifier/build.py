"""Build a servable classifier folder from a base encoder and an adapter file.

Each ensemble member's LoRA factors are merged into the base weights with numpy
(:mod:`r3_service.classifier.adapter`), written as a Hugging Face folder, and
handed to an ``export`` function that turns it into an ONNX folder the service can
open (``model.onnx`` ending in mean pooling, ``tokenizer.json``, ``r3_profile.json``).
The default export is ``r3_service.encoder.export.export_encoder``, which builds a BERT
folder's graph with ``onnx`` alone (no torch); any exporter with the same contract can
replace it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r3_service.classifier.adapter import (
    load_adapter,
    merge_member,
    read_safetensors,
    write_merged_model,
)
from r3_service.classifier.runtime import CONFIG_FILE, DEFAULT_BAND, FORMAT_VERSION

logger = logging.getLogger(__name__)

#: (merged Hugging Face folder, output folder) -> an ONNX folder in ``output``.
ExportFn = Callable[[Path, Path], None]
#: Adapters that ship with the package, one per default encoder.
MODELS_DIR = Path(__file__).resolve().parent / "models"


def shipped_adapter_path(encoder: str = "all-MiniLM-L6-v2") -> Path:
    """The adapter file shipped for ``encoder``."""
    return MODELS_DIR / f"{encoder}.qtype.safetensors"


def default_export(hf_dir: Path, out: Path) -> None:
    """Export with ``export_encoder``: torch-free for a BERT folder (``bert_onnx``)."""
    from r3_service.encoder.export import export_encoder

    export_encoder(str(hf_dir), out, profile="minilm", local_files_only=True)


def classifier_config(
    members: list[dict[str, Any]], info: dict[str, Any], sha: str
) -> dict[str, Any]:
    """The ``qtype_classifier.json`` contents for merged members described by ``info``."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": "finetuned",
        "name": f"{info.get('base', 'encoder')}-qtype",
        "base": info.get("base", ""),
        "adapter_sha256": sha,
        "members": [f"member{k}" for k in range(len(members))],
        "heads": [
            {
                "weight": [float(v) for v in m["head.weight"].ravel()],
                "bias": float(m["head.bias"].ravel()[0]),
            }
            for m in members
        ],
        "max_length": int(info.get("max_length", 128)),
        "temperature": float(info.get("temperature", 1.0)),
        "threshold": float(info.get("threshold", 0.5)),
        "abstain_band": list(info.get("abstain_band", DEFAULT_BAND)),
        "metrics": info.get("metrics", {}),
        "training": {k: v for k, v in info.items() if k not in ("metrics",)},
    }


def build_classifier(
    base_dir: Path | str, adapter: Path | str, out: Path | str, export: ExportFn = default_export
) -> Path:
    """Merge every member of ``adapter`` into ``base_dir``'s weights and export it to ``out``.

    Writes into a temporary sibling folder and renames it into place at the end.
    """
    base_dir, out = Path(base_dir), Path(out)
    members, info = load_adapter(adapter)
    base, _ = read_safetensors(base_dir / "model.safetensors")
    scale = float(info["lora_alpha"]) / float(info["lora_rank"])
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for k, member in enumerate(members):
        with tempfile.TemporaryDirectory(prefix="r3-qtype-") as tmp:
            merged = write_merged_model(base_dir, merge_member(base, member, scale), Path(tmp))
            logger.info("exporting query-type classifier member %d/%d", k + 1, len(members))
            export(merged, staging / f"member{k}")
    sha = hashlib.sha256(Path(adapter).read_bytes()).hexdigest()
    config = classifier_config(members, info, sha)
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return out
