"""Encoder profiles: how an exported model turns texts into relevance scores."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

PROFILE_FILE = "r3_profile.json"
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1

Similarity = Literal["dot", "cosine"]
Dtype = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class EncoderProfile:
    """What the service needs to know about an exported encoder folder."""

    name: str
    similarity: Similarity = "dot"
    #: Input range of F: relevance values mapped onto [0, max_sequence_length / 100].
    relevance_range: tuple[float, float] = (0.0, 3.5)
    pooling: Literal["mean"] = "mean"
    max_length: int = 512
    truncation: Literal["left"] = "left"
    dtype: Dtype = "fp32"
    hidden_size: int = 0
    pad_token_id: int = 0
    source: str = ""
    onnx_file: str = ONNX_FILE
    tokenizer_file: str = TOKENIZER_FILE
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["relevance_range"] = list(self.relevance_range)
        data["format_version"] = FORMAT_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderProfile:
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported profile format_version {version}")
        low, high = data.pop("relevance_range")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(relevance_range=(float(low), float(high)), **known)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / PROFILE_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> EncoderProfile:
        return cls.from_json(json.loads((Path(folder) / PROFILE_FILE).read_text()))


#: The paper's encoder: Contriever, mean pooling, plain dot product, F input range [0, 3.5].
CONTRIEVER = EncoderProfile(name="contriever", similarity="dot", relevance_range=(0.0, 3.5))

#: all-MiniLM-L6-v2 was trained for cosine similarity, whose useful range is [0, 1].
MINILM = EncoderProfile(name="all-MiniLM-L6-v2", similarity="cosine", relevance_range=(0.0, 1.0))

PRESETS: dict[str, EncoderProfile] = {"contriever": CONTRIEVER, "minilm": MINILM}


def preset_for(model: str, preset: str | None = None) -> EncoderProfile:
    """The preset named ``preset``, or one guessed from the model name (Contriever's by default)."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown profile {preset!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[preset]
    lowered = model.lower()
    if "minilm" in lowered:
        return MINILM
    return replace(CONTRIEVER, name=Path(model).name or model)
