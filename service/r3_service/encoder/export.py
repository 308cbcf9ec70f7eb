"""Export a Hugging Face encoder to a self-contained ONNX folder (needs the `export` extra).

The folder holds ``model.onnx``, ``tokenizer.json`` and ``r3_profile.json``.

Graph fusion with ONNX Runtime's transformer optimizer (fused Attention,
SkipLayerNorm, BiasGelu) is applied for fp16, which needs it and is for GPUs. For
fp32 and int8 it is off by default: on CPU, ORT's own load-time optimisation of
the plain graph ran as fast or faster (all-MiniLM-L6-v2, 2 cores, ORT 1.32:
about 350 vs 325 texts/s in length-sorted batches of 16). ``optimize=True``
forces it, e.g. for fp32 on a GPU.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from r3_service.encoder.profile import ONNX_FILE, TOKENIZER_FILE, Dtype, EncoderProfile, preset_for

logger = logging.getLogger(__name__)

#: Name of the pooled output the exported graph ends with.
SENTENCE_EMBEDDING = "sentence_embedding"

#: Model types the ORT transformer optimizer knows how to fuse.
_FUSABLE = {"bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "electra", "deberta-v2"}


def export_encoder(
    model: str,
    out: Path,
    *,
    dtype: Dtype = "fp32",
    profile: str | None = None,
    optimize: bool | None = None,
    max_length: int = 512,
    local_files_only: bool = False,
) -> EncoderProfile:
    """Export ``model`` (hub id or local folder) to ``out`` and return the written profile.

    ``optimize``: fuse the graph offline; ``None`` (default) fuses for fp16 only.
    """
    if optimize is None:
        optimize = dtype == "fp16"
    from optimum.exporters.onnx import main_export
    from transformers import AutoConfig, AutoTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(model, local_files_only=local_files_only)
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local_files_only)
    if not tokenizer.is_fast:
        raise ValueError(f"{model}: a fast tokenizer (tokenizer.json) is required")

    with tempfile.TemporaryDirectory(prefix="r3-export-") as tmp:
        logger.info("exporting %s to ONNX", model)
        main_export(
            model,
            output=tmp,
            task="feature-extraction",
            library_name="transformers",
            opset=17,
            device="cpu",
            local_files_only=local_files_only,
            do_validation=False,
        )
        raw = Path(tmp) / "model.onnx"
        staged = Path(tmp) / "staged.onnx"
        _optimize(raw, staged, config, dtype=dtype, optimize=optimize)
        if dtype == "int8":
            quantized = Path(tmp) / "quantized.onnx"
            _quantize_int8(staged, quantized)
            staged = quantized
        add_mean_pooling(staged, out / ONNX_FILE)

    tokenizer.save_pretrained(out)
    if not (out / TOKENIZER_FILE).exists():
        raise RuntimeError(f"{model}: the tokenizer did not write {TOKENIZER_FILE}")
    limit = min(max_length, int(getattr(config, "max_position_embeddings", max_length)))
    result = replace(
        preset_for(model, profile),
        max_length=limit,
        dtype=dtype,
        hidden_size=int(config.hidden_size),
        pad_token_id=int(tokenizer.pad_token_id or 0),
        source=str(model),
        extra={
            "model_type": config.model_type,
            "graph_optimized": optimize,
            "output": SENTENCE_EMBEDDING,
        },
    )
    result.save(out)
    logger.info("exported %s (%s) to %s", model, dtype, out)
    return result


def _optimize(src: Path, dst: Path, config: object, *, dtype: Dtype, optimize: bool) -> None:
    """Fuse attention/LayerNorm/GELU with ORT's transformer optimizer; fp16 if asked."""
    model_type = getattr(config, "model_type", "")
    if not optimize or model_type not in _FUSABLE:
        if dtype == "fp16":
            raise ValueError(f"fp16 needs graph optimisation, unsupported for {model_type!r}")
        shutil.copyfile(src, dst)
        return
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(src),
        model_type="bert",
        num_heads=int(getattr(config, "num_attention_heads", 0)),
        hidden_size=int(getattr(config, "hidden_size", 0)),
        opt_level=0,
        use_gpu=dtype == "fp16",
    )
    logger.info("fused operators: %s", optimized.get_fused_operator_statistics())
    if dtype == "fp16":
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(dst))


def add_mean_pooling(src: Path, dst: Path) -> None:
    """Append mean pooling over non-padding tokens to the graph, in fp32.

    The graph then outputs ``sentence_embedding`` (batch, hidden) instead of the
    hidden states (batch, seq, hidden): on a GPU, only the pooled vectors leave the
    device. The pooling is sum(h * mask) / max(sum(mask), 1), as ``mean_pool``.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    hidden = graph.output[0].name
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["r3_mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["r3_mask_f", "r3_axis2"], ["r3_mask_u"]),
        helper.make_node("Mul", [hidden, "r3_mask_u"], ["r3_masked"]),
        helper.make_node("ReduceSum", ["r3_masked", "r3_axis1"], ["r3_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["r3_mask_u", "r3_axis1"], ["r3_count"], keepdims=0),
        helper.make_node("Max", ["r3_count", "r3_one"], ["r3_count_c"]),
        helper.make_node("Div", ["r3_sum", "r3_count_c"], [SENTENCE_EMBEDDING]),
    ]
    graph.initializer.extend(
        [
            helper.make_tensor("r3_axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("r3_axis2", TensorProto.INT64, [1], [2]),
            helper.make_tensor("r3_one", TensorProto.FLOAT, [], [1.0]),
        ]
    )
    graph.node.extend(nodes)
    while len(graph.output):
        graph.output.pop()
    graph.output.append(
        helper.make_tensor_value_info(SENTENCE_EMBEDDING, TensorProto.FLOAT, ["batch", "hidden"])
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def _quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the weights (for CPU)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        # Fused contrib ops defeat shape inference; their tensors are fp32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
