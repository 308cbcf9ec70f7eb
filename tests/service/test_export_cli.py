"""``r3-export``: the embedded encoder by name, always a classifier, no debris on failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from r3_service.classifier.head import HEAD_FILE
from r3_service.classifier.runtime import CLASSIFIER_DIR, CONFIG_FILE
from r3_service.cli import INT8_MEASURED
from r3_service.encoder import EncoderProfile, load_encoder


def r3_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from r3_service.cli import export_main; export_main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", **_pythonpath()},
    )


def _pythonpath() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in {"PYTHONPATH", "HOME", "VIRTUAL_ENV"}}


@pytest.mark.parametrize("name", ["default", "sentence-transformers/all-MiniLM-L6-v2"])
def test_default_names_export_the_embedded_encoder(
    name: str, tmp_path: Path, minilm_dir: Path
) -> None:
    out = tmp_path / "out"
    result = r3_export(name, "--out", str(out))
    assert result.returncode == 0, result.stderr
    profile = EncoderProfile.load(out)
    assert (profile.name, profile.similarity, profile.extra["backend"]) == (
        "all-MiniLM-L6-v2",
        "cosine",
        "onnx",
    )
    classifier = out / CLASSIFIER_DIR / CONFIG_FILE
    assert classifier.read_bytes() == (minilm_dir / CLASSIFIER_DIR / CONFIG_FILE).read_bytes()
    texts = ["What is 2+2?", "Write a poem about the sea."]
    assert np.array_equal(load_encoder(out).encode(texts), load_encoder(minilm_dir).encode(texts))
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) < 10


def test_int8_warns_and_keeps_the_classifier(tmp_path: Path) -> None:
    out = tmp_path / "int8"
    result = r3_export("all-MiniLM-L6-v2", "--out", str(out), "--dtype", "int8")
    assert result.returncode == 0, result.stderr
    assert "int8 changes rewards" in result.stderr and INT8_MEASURED in result.stderr
    assert EncoderProfile.load(out).dtype == "int8"
    classifier = json.loads((out / CLASSIFIER_DIR / CONFIG_FILE).read_text())
    assert classifier["base"] == "all-MiniLM-L6-v2"
    for member in classifier["members"]:  # the classifier stays fp32
        assert EncoderProfile.load(out / CLASSIFIER_DIR / member).dtype == "fp32"


def test_other_encoders_get_a_trained_classifier(tiny_bert_source: Path, tmp_path: Path) -> None:
    data = tmp_path / "labelled.json"
    rows = [
        {"input": f"Write a long story about topic {i}.", "qtype": "OPENENDED"} for i in range(30)
    ]
    rows += [{"input": f"What is {i} plus {i}?", "qtype": "CONSTRAINED"} for i in range(30)]
    data.write_text(json.dumps(rows))
    out = tmp_path / "tiny"
    result = r3_export(str(tiny_bert_source), "--out", str(out), "--classifier-data", str(data))
    assert result.returncode == 0, result.stderr
    head = json.loads((out / HEAD_FILE).read_text())
    assert head["encoder"] == "contriever" and head["embedding_dim"] == 32


def test_a_failed_export_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "never"
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    (missing / "config.json").write_text('{"model_type": "bert"}')
    result = r3_export(str(missing), "--out", str(out), "--backend", "onnx")
    assert result.returncode != 0
    assert not out.exists()
