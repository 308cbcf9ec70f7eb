"""The classifier's adapter file, and merging it into the base encoder's weights (numpy only).

An adapter file is a safetensors file holding, for each ensemble member ``k``, the
LoRA factors ``m{k}.<base weight name without .weight>.lora_A`` / ``.lora_B`` and
the head ``m{k}.head.weight`` / ``m{k}.head.bias``; its metadata entry
``r3_qtype`` (JSON) holds the rank, alpha, base model, temperature, threshold,
abstain band and validation metrics.

:func:`merge_member` turns the base model's weights plus one member's factors into
plain BERT weights (``W + alpha / rank * B @ A``); :func:`write_merged_model` writes
them as a Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer
files) that any BERT-family ONNX exporter can turn into a service folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from r3_service.encoder.bert_onnx import read_safetensors_file

META_KEY = "r3_qtype"
#: Files copied from the base model folder next to the merged weights.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def read_safetensors(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file (the encoder package's reader)."""
    return read_safetensors_file(path)


def write_safetensors(
    path: Path | str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` and string ``metadata`` as safetensors (``safetensors.numpy``)."""
    from safetensors.numpy import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    save_file(arrays, str(target), metadata=dict(metadata) if metadata else None)
    return target


def save_adapter(
    path: Path | str, members: Sequence[Mapping[str, np.ndarray]], info: Mapping[str, Any]
) -> Path:
    """Write ensemble members (LoRA factors as fp16, heads as fp32) and ``info``."""
    tensors: dict[str, np.ndarray] = {}
    for k, member in enumerate(members):
        for name, value in member.items():
            dtype = np.float32 if name.startswith("head.") else np.float16
            tensors[f"m{k}.{name}"] = np.asarray(value, dtype=dtype)
    meta = {META_KEY: json.dumps({**info, "members": len(members)}, sort_keys=True)}
    return write_safetensors(path, tensors, meta)


def load_adapter(path: Path | str) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Members (name -> float32 array) and the ``info`` dict of an adapter file."""
    tensors, meta = read_safetensors(path)
    if META_KEY not in meta:
        raise ValueError(f"{path}: not a query-type adapter (no {META_KEY!r} metadata)")
    info = json.loads(meta[META_KEY])
    members: list[dict[str, np.ndarray]] = [{} for _ in range(int(info["members"]))]
    for name, value in tensors.items():
        index, _, rest = name.partition(".")
        members[int(index[1:])][rest] = value.astype(np.float32)
    return members, info


def merge_member(
    base: Mapping[str, np.ndarray], member: Mapping[str, np.ndarray], scale: float
) -> dict[str, np.ndarray]:
    """Base weights with ``scale * B @ A`` added to every adapted linear layer (float32)."""
    merged = {name: np.asarray(value) for name, value in base.items()}
    for name, a in member.items():
        if not name.endswith(".lora_A"):
            continue
        stem = name[: -len(".lora_A")]
        weight = stem + ".weight"
        if weight not in merged:
            raise KeyError(f"adapter layer {stem} is not in the base model")
        b = member[stem + ".lora_B"]
        delta = scale * (b.astype(np.float64) @ a.astype(np.float64))
        merged[weight] = (merged[weight].astype(np.float64) + delta).astype(np.float32)
    return merged


def write_merged_model(base_dir: Path | str, weights: Mapping[str, np.ndarray], out: Path) -> Path:
    """A Hugging Face folder: the base's config and tokenizer files, the merged weights."""
    base_dir, out = Path(base_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(base_dir / "config.json", out / "config.json")
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out / name)
    write_safetensors(out / "model.safetensors", weights, {"format": "pt"})
    return out
