"""Adapter files, the numpy merge, and the chain torch model -> merged ONNX -> same logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from r3_service.classifier.adapter import (
    load_adapter,
    merge_member,
    read_safetensors,
    save_adapter,
    write_merged_model,
    write_safetensors,
)


def test_safetensors_round_trip_with_the_library(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1.5, -2.0], dtype=np.float16),
        "c": np.array([[7]], dtype=np.int64),
    }
    mine = write_safetensors(tmp_path / "mine.safetensors", tensors, {"k": "v"})
    for name, value in load_file(str(mine)).items():
        np.testing.assert_array_equal(value, tensors[name])
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"x": "y"})
    read, meta = read_safetensors(tmp_path / "theirs.safetensors")
    assert meta == {"x": "y"}
    for name, value in read.items():
        assert value.dtype == tensors[name].dtype
        np.testing.assert_array_equal(value, tensors[name])


def test_merge_adds_scaled_low_rank_product() -> None:
    base = {"l.weight": np.ones((3, 2), dtype=np.float32), "l.bias": np.zeros(3, np.float32)}
    a = np.array([[1.0, 2.0]], dtype=np.float32)  # rank 1, in 2
    b = np.array([[1.0], [0.0], [-1.0]], dtype=np.float32)  # out 3
    merged = merge_member(base, {"l.lora_A": a, "l.lora_B": b, "head.weight": a}, scale=2.0)
    np.testing.assert_allclose(merged["l.weight"], [[3.0, 5.0], [1.0, 1.0], [-1.0, -3.0]])
    np.testing.assert_array_equal(merged["l.bias"], base["l.bias"])
    with pytest.raises(KeyError, match="not in the base"):
        merge_member(base, {"x.lora_A": a, "x.lora_B": b}, 1.0)


def test_adapter_file_round_trip(tmp_path: Path) -> None:
    members = [
        {"l.lora_A": np.full((2, 4), k, np.float32), "head.weight": np.ones((1, 4), np.float32)}
        for k in range(2)
    ]
    path = save_adapter(tmp_path / "a.safetensors", members, {"lora_rank": 2, "temperature": 1.5})
    loaded, info = load_adapter(path)
    assert info["members"] == 2 and info["temperature"] == 1.5
    assert [m["l.lora_A"][0, 0] for m in loaded] == [0.0, 1.0]
    assert loaded[0]["head.weight"].dtype == np.float32
    write_safetensors(tmp_path / "plain.safetensors", {"x": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="not a query-type adapter"):
        load_adapter(tmp_path / "plain.safetensors")


@pytest.mark.slow
def test_trained_lora_merged_and_exported_gives_the_torch_logits(
    tiny_bert_source: Path, tmp_path: Path
) -> None:
    """Fine-tune the tiny BERT with LoRA, merge in numpy, export with the real exporter:
    transformers on the merged folder and ONNX Runtime on the export give the torch logits."""
    import torch
    from qtype_rows import toy_rows
    from transformers import AutoModel

    from r3_service.classifier.build import build_classifier
    from r3_service.classifier.runtime import EnsembleEncoder, read_config
    from r3_service.classifier_training import finetune as F

    rows = toy_rows(48, seed=0)
    texts = [r["input"] for r in rows]
    y = np.array([r["qtype"] == "OPENENDED" for r in rows], dtype=np.int64)
    config = F.FinetuneConfig(epochs=1, batch_size=16, max_length=16, lr=5e-3, augment_copies=1)
    model = F.train_model(texts, y, tiny_bert_source, config, device="cpu")
    tensors = F.adapter_tensors(model)
    assert any(k.endswith(".lora_B") and np.abs(v).max() > 0 for k, v in tensors.items())
    probe = ["Write a poem about winter.", "What is the capital of Peru? " * 6]
    expected = F.predict_logits(model, probe, tiny_bert_source, config)

    base, _ = read_safetensors(tiny_bert_source / "model.safetensors")
    merged = merge_member(base, tensors, config.lora_alpha / config.lora_rank)
    hf = write_merged_model(tiny_bert_source, merged, tmp_path / "hf")
    plain = AutoModel.from_pretrained(str(hf)).eval()
    ids = torch.tensor([[101, 2054, 2003, 102]])
    with torch.inference_mode():
        ours = plain(input_ids=ids).last_hidden_state
        theirs = model.encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)

    info = {"lora_rank": config.lora_rank, "lora_alpha": config.lora_alpha,
            "max_length": config.max_length, "temperature": 2.0, "base": "tiny"}  # fmt: skip
    adapter = save_adapter(tmp_path / "adapter.safetensors", [tensors], info)
    folder = build_classifier(tiny_bert_source, adapter, tmp_path / "qtype")
    config_file = read_config(folder)
    assert config_file["members"] == ["member0"] and config_file["temperature"] == 2.0
    assert json.loads((folder / "qtype_classifier.json").read_text())["abstain_band"]
    onnx_logits = EnsembleEncoder(folder, config_file).encode(probe)[:, 0]
    # LoRA factors are stored as fp16: the merged weights differ from torch's by rounding
    np.testing.assert_allclose(onnx_logits, expected, atol=2e-3)
