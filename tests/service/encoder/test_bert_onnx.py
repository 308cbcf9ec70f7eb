"""The torch-free BERT graph builder against the optimum/torch export: equal bit for bit."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from r3_service.encoder import EncoderProfile, load_encoder
from r3_service.encoder.bert_onnx import (
    build_bert_graph,
    build_bert_onnx,
    check_config,
    export_bert_folder,
    load_folder_weights,
    read_safetensors,
)
from r3_service.models import bundled_model_dir

TEXTS = [
    "Write a story about a dragon.",
    "Classify the sentiment: I loved it.",
    "Ünïcödé テキスト 😀 and emoji",
    "",
    "word " * 700,  # longer than 512 tokens: truncated on the left
    "The quick brown fox jumps over the lazy dog. " * 20,
]


def _session(path: Path, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(seed: int, batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, seq))
    mask = np.ones((batch, seq), dtype=np.int64)
    for row in range(1, batch):  # ragged rows: padding at the end
        mask[row, int(rng.integers(1, seq + 1)) :] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _op_types(path: Path) -> Counter[str]:
    """How many nodes of each type the graph has (the order within a layer may differ).

    Identity nodes are left out: torch.onnx stores equal weights once and adds an Identity
    per copy (a fresh random model's LayerNorms are all ones).
    """
    nodes = onnx.load(str(path)).graph.node
    return Counter(node.op_type for node in nodes if node.op_type != "Identity")


@pytest.mark.parametrize(
    "level", [ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL]
)
def test_minilm_graph_is_bit_for_bit_the_torch_export(
    minilm_dir: Path, minilm_torch_dir: Path, level: ort.GraphOptimizationLevel
) -> None:
    ours = _session(minilm_dir / "model.onnx", level)
    torch_export = _session(minilm_torch_dir / "model.onnx", level)
    for seed, (batch, seq) in enumerate([(1, 1), (1, 7), (4, 33), (16, 128), (2, 512)]):
        feeds = _feeds(seed, batch, seq, 30522)
        a = ours.run(None, feeds)[0]
        b = torch_export.run(None, feeds)[0]
        assert a.shape == (batch, 384)
        assert np.array_equal(a, b), f"batch {batch} x {seq}: max diff {np.abs(a - b).max()}"


def test_minilm_graph_has_the_torch_exports_nodes(minilm_dir: Path, minilm_torch_dir: Path) -> None:
    assert _op_types(minilm_dir / "model.onnx") == _op_types(minilm_torch_dir / "model.onnx")
    ours, theirs = (
        onnx.load(str(minilm_dir / "model.onnx")),
        onnx.load(str(minilm_torch_dir / "model.onnx")),
    )
    assert ours.opset_import[0].version == theirs.opset_import[0].version == 17


def test_minilm_embeddings_and_tokenizer_equal_the_torch_export(
    minilm_dir: Path, minilm_torch_dir: Path
) -> None:
    ours, theirs = load_encoder(minilm_dir), load_encoder(minilm_torch_dir)
    assert [list(t) for t in ours.tokenize(TEXTS)] == [list(t) for t in theirs.tokenize(TEXTS)]
    assert np.array_equal(ours.encode(TEXTS), theirs.encode(TEXTS))
    a, b = EncoderProfile.load(minilm_dir), EncoderProfile.load(minilm_torch_dir)
    assert (a.extra["backend"], b.extra["backend"]) == ("onnx", "torch")
    assert a.to_json() | {"extra": {}} == b.to_json() | {"extra": {}}


def test_tiny_bert_folder_export_equals_torch_export(
    tiny_bert_source: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    """A random 2-layer BERT (hidden 32, 2 heads): the same graph for another config."""
    profile = export_bert_folder(tiny_bert_source, tmp_path)
    assert profile.extra["backend"] == "onnx"
    assert EncoderProfile.load(tiny_bert_dir).extra["backend"] == "torch"
    assert _op_types(tmp_path / "model.onnx") == _op_types(tiny_bert_dir / "model.onnx")
    a, b = load_encoder(tmp_path), load_encoder(tiny_bert_dir)
    assert np.array_equal(a.encode(TEXTS), b.encode(TEXTS))


def test_build_from_weights_with_task_prefix_matches_pytorch(tmp_path: Path) -> None:
    """Weights held in numpy under ``bert.`` names (a fine-tuned classifier's), BERT-base shape
    ratios scaled down: the built graph computes BertModel's hidden states."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(1)
    model = transformers.BertForSequenceClassification(config).eval()
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    assert any(k.startswith("bert.") for k in weights) and "classifier.weight" in weights
    path = build_bert_onnx(weights, config.to_dict(), tmp_path, pooling=False)
    assert path == tmp_path / "model.onnx"
    feeds = _feeds(3, 3, 20, 100)
    ours = _session(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, feeds)[0]
    with torch.no_grad():
        ref = model.bert(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
    mask = feeds["attention_mask"].astype(bool)
    assert np.abs(ours[mask] - ref.numpy()[mask]).max() <= 1e-5
    pooled = build_bert_onnx(weights, config.to_dict(), tmp_path / "pooled.onnx")
    out = _session(pooled, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, feeds)[0]
    expected = (ref.numpy() * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    assert out.shape == (3, 48) and np.abs(out - expected).max() <= 1e-5


def test_read_safetensors_matches_the_reference_reader() -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = bundled_model_dir() / "model.safetensors"
    ours = read_safetensors(path)
    theirs = safetensors_numpy.load_file(str(path))
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype and np.array_equal(ours[name], value), name


def test_read_safetensors_widens_bf16(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    value = torch.tensor([[1.5, -2.25, 3.0e-3], [1e10, 0.0, -7.0]], dtype=torch.bfloat16)
    safetensors_torch.save_file({"w": value, "i": torch.arange(3)}, str(tmp_path / "m.safetensors"))
    read = read_safetensors(tmp_path / "m.safetensors")
    assert read["w"].dtype == np.float32
    assert np.array_equal(read["w"], value.float().numpy())
    assert read["i"].tolist() == [0, 1, 2]


def test_unsupported_configs_are_refused_by_name() -> None:
    config = json.loads((bundled_model_dir() / "config.json").read_text())
    check_config(config)
    with pytest.raises(ValueError, match="roberta"):
        check_config(config | {"model_type": "roberta"})
    with pytest.raises(ValueError, match="gelu"):
        check_config(config | {"hidden_act": "relu"})
    weights = load_folder_weights(bundled_model_dir())
    del weights["encoder.layer.5.output.dense.weight"]
    with pytest.raises(KeyError, match="layer.5.output.dense.weight"):
        build_bert_graph(weights, config)


def test_fp16_export_without_torch(tmp_path: Path, minilm_dir: Path) -> None:
    """fp16 goes through ORT's own transformer optimizer and float16 converter (no torch)."""
    profile = export_bert_folder(bundled_model_dir(), tmp_path, profile="minilm", dtype="fp16")
    assert (profile.dtype, profile.extra["graph_optimized"]) == ("fp16", True)
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert onnx.TensorProto.FLOAT16 in {init.data_type for init in model.graph.initializer}
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    half = load_encoder(tmp_path, provider="cpu").encode(TEXTS[:3])
    full = load_encoder(minilm_dir).encode(TEXTS[:3])
    cos = (half * full).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(full, axis=1)
    assert cos.min() > 0.999
