"""The exported ONNX encoders against PyTorch, and the export pipeline's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from r3_service.encoder import EncoderProfile, load_encoder
from r3_service.encoder.profile import preset_for

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "Write a story about a dragon.",
    "Classify the sentiment: I loved it.",
    "Ünïcödé テキスト 😀 and emoji",
    "",
    "word " * 700,  # longer than 512 tokens: truncated on the left
    "The quick brown fox jumps over the lazy dog. " * 20,
]


def torch_embeddings(source: Path, texts: list[str]) -> np.ndarray:
    """The authors' recipe: mean of last hidden states over non-padding tokens."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), truncation_side="left")
    model = transformers.AutoModel.from_pretrained(str(source)).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def test_minilm_onnx_matches_pytorch(minilm_dir: Path) -> None:
    from r3_service.models import bundled_model_dir

    encoder = load_encoder(minilm_dir)
    ours = encoder.encode(TEXTS)
    ref = torch_embeddings(bundled_model_dir(), TEXTS)
    assert ours.shape == ref.shape == (len(TEXTS), 384)
    assert np.abs(ours - ref).max() <= 1e-4


def test_minilm_profile_is_cosine_over_unit_range(minilm_dir: Path) -> None:
    profile = EncoderProfile.load(minilm_dir)
    assert profile.similarity == "cosine"
    assert profile.relevance_range == (0.0, 1.0)
    assert (profile.pooling, profile.truncation, profile.max_length) == ("mean", "left", 512)
    assert profile.extra["graph_optimized"] is False  # fp32: ORT optimises at load


def test_fused_graph_matches_pytorch(tmp_path: Path) -> None:
    """The offline-fused graph (used for fp16/GPU) keeps the embeddings."""
    from r3_service.encoder.export import export_encoder
    from r3_service.models import bundled_model_dir

    profile = export_encoder(
        str(bundled_model_dir()), tmp_path, profile="minilm", optimize=True, local_files_only=True
    )
    assert profile.extra["graph_optimized"] is True
    ours = load_encoder(tmp_path).encode(TEXTS)
    ref = torch_embeddings(bundled_model_dir(), TEXTS)
    assert np.abs(ours - ref).max() <= 1e-4


def test_tiny_bert_contriever_path_matches_pytorch(
    tiny_bert_source: Path, tiny_bert_dir: Path
) -> None:
    profile = EncoderProfile.load(tiny_bert_dir)
    assert profile.similarity == "dot"
    assert profile.relevance_range == (0.0, 3.5)
    encoder = load_encoder(tiny_bert_dir)
    ours = encoder.encode(TEXTS)
    ref = torch_embeddings(tiny_bert_source, TEXTS)
    assert np.abs(ours - ref).max() <= 1e-4


def test_left_truncation_keeps_the_end(minilm_dir: Path) -> None:
    encoder = load_encoder(minilm_dir)
    long_text = "alpha " * 600 + "omega"
    ids = encoder.tokenize([long_text])[0]
    assert len(ids) == 512
    vocab = encoder.tokenizer.get_vocab()  # type: ignore[attr-defined]
    assert ids[0] == vocab["[CLS]"] and ids[-1] == vocab["[SEP]"]
    assert ids[-2] == vocab["omega"]


def test_batching_does_not_change_embeddings(minilm_dir: Path) -> None:
    encoder = load_encoder(minilm_dir)
    batched = encoder.encode(TEXTS, batch_size=len(TEXTS))
    single = np.stack([encoder.encode([t])[0] for t in TEXTS])
    assert np.abs(batched - single).max() <= 1e-5


def test_contriever_is_recognised_by_name() -> None:
    assert preset_for("facebook/contriever").similarity == "dot"
    assert preset_for("facebook/contriever").relevance_range == (0.0, 3.5)
    assert preset_for("/models/contriever-msmarco").relevance_range == (0.0, 3.5)
    assert preset_for("sentence-transformers/all-MiniLM-L6-v2").similarity == "cosine"
    with pytest.raises(ValueError):
        preset_for("x", "nope")


@pytest.mark.slow
def test_int8_export_is_close(tiny_bert_source: Path, tmp_path: Path) -> None:
    from r3_service.encoder.export import export_encoder

    profile = export_encoder(str(tiny_bert_source), tmp_path, dtype="int8", local_files_only=True)
    assert profile.dtype == "int8"
    fp32 = torch_embeddings(tiny_bert_source, TEXTS[:3])
    int8 = load_encoder(tmp_path).encode(TEXTS[:3])
    cos = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cos.min() > 0.95


@pytest.mark.slow
def test_fp16_export_writes_a_half_precision_graph(tiny_bert_source: Path, tmp_path: Path) -> None:
    import onnx

    from r3_service.encoder.export import export_encoder

    export_encoder(str(tiny_bert_source), tmp_path, dtype="fp16", local_files_only=True)
    model = onnx.load(str(tmp_path / "model.onnx"))
    dtypes = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes
    # inputs and outputs stay fp32/int64 so callers need no change
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_pooling_is_in_the_graph_and_old_exports_still_load(
    tiny_bert_source: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    import shutil

    import onnx
    from optimum.exporters.onnx import main_export

    from r3_service.encoder.export import SENTENCE_EMBEDDING

    pooled = onnx.load(str(tiny_bert_dir / "model.onnx"))
    assert [o.name for o in pooled.graph.output] == [SENTENCE_EMBEDDING]
    # An export from before pooling moved into the graph: hidden states out, pooled in numpy.
    old = tmp_path / "old"
    main_export(str(tiny_bert_source), output=old, task="feature-extraction", do_validation=False)
    for name in ("tokenizer.json", "r3_profile.json"):
        shutil.copyfile(tiny_bert_dir / name, old / name)
    new_vectors = load_encoder(tiny_bert_dir).encode(TEXTS)
    old_vectors = load_encoder(old).encode(TEXTS)
    assert np.abs(new_vectors - old_vectors).max() <= 1e-5
