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
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

META_KEY = "r3_qtype"
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
#: Files copied from the base model folder next to the merged weights.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def read_safetensors(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file (numpy; F32/F16/F64/I64 only)."""
    raw = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + size
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        array = np.frombuffer(raw[base + start : base + end], dtype=_DTYPES[info["dtype"]])
        out[name] = array.reshape(info["shape"]).copy()
    return out, dict(meta)


def write_safetensors(
    path: Path | str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (little-endian, C order) and string ``metadata`` as safetensors."""
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype not in _NAMES:
            raise ValueError(f"tensor {name} has unsupported dtype {array.dtype}")
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)
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
