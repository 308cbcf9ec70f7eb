"""Export an encoder to a self-contained ONNX folder (torch-free for BERT folders, see bert_onnx).

The folder holds ``model.onnx``, ``tokenizer.json`` and ``r3_profile.json``.

Graph fusion with ONNX Runtime's transformer optimizer (fused Attention,
SkipLayerNorm, BiasGelu) is applied for fp16, which needs it and is for GPUs. For
fp32 and int8 it is off by default: on CPU, ORT's own load-time optimisation of
the plain graph ran as fast or faster (all-MiniLM-L6-v2, 2 cores, ORT 1.32:
about 350 vs 325 texts/s in length-sorted batches of 16). ``optimize=True``
forces it, e.g. for fp32 on a GPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from r3_service.encoder.profile import ONNX_FILE, TOKENIZER_FILE, Dtype, EncoderProfile, preset_for

logger = logging.getLogger(__name__)

#: Name of the pooled output the exported graph ends with.
SENTENCE_EMBEDDING = "sentence_embedding"

#: Model types the ORT transformer optimizer knows how to fuse.
_FUSABLE = {"bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "electra", "deberta-v2"}


Backend = Literal["auto", "onnx", "torch"]


@dataclass(frozen=True)
class SourceInfo:
    """What the export needs to know about the source model, whichever backend read it."""

    model_type: str
    hidden_size: int
    num_attention_heads: int
    max_position_embeddings: int
    pad_token_id: int


def export_encoder(
    model: str,
    out: Path,
    *,
    dtype: Dtype = "fp32",
    profile: str | None = None,
    optimize: bool | None = None,
    max_length: int = 512,
    local_files_only: bool = False,
    backend: Backend = "auto",
) -> EncoderProfile:
    """Export ``model`` (hub id or local folder) to ``out`` and return the written profile.

    ``optimize``: fuse the graph offline; ``None`` (default) fuses for fp16 only.
    ``backend``: ``onnx`` builds a BERT graph from safetensors with ``onnx`` alone (no torch;
    same graph as the torch export); ``torch`` goes through optimum/torch (any architecture, hub
    ids); ``auto`` takes ``onnx`` for a local BERT folder that it can read, else ``torch``.
    """
    if optimize is None:
        optimize = dtype == "fp16"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = choose_backend(model, backend)
    with tempfile.TemporaryDirectory(prefix="r3-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        logger.info("exporting %s to ONNX (%s backend)", model, chosen)
        if chosen == "onnx":
            info = _export_with_onnx(Path(model), raw, out)
        else:
            info = _export_with_torch(model, raw, out, local_files_only=local_files_only)
        staged = Path(tmp) / "staged.onnx"
        _optimize(raw, staged, info, dtype=dtype, optimize=optimize)
        if dtype == "int8":
            quantized = Path(tmp) / "quantized.onnx"
            _quantize_int8(staged, quantized)
            staged = quantized
        add_mean_pooling(staged, out / ONNX_FILE)
    if not (out / TOKENIZER_FILE).exists():
        raise RuntimeError(f"{model}: the tokenizer did not write {TOKENIZER_FILE}")
    limit = min(max_length, info.max_position_embeddings)
    result = replace(
        preset_for(model, profile),
        max_length=limit,
        dtype=dtype,
        hidden_size=info.hidden_size,
        pad_token_id=info.pad_token_id,
        source=str(model),
        extra={
            "model_type": info.model_type,
            "graph_optimized": optimize,
            "output": SENTENCE_EMBEDDING,
            "backend": chosen,
        },
    )
    result.save(out)
    logger.info("exported %s (%s) to %s", model, dtype, out)
    return result


def choose_backend(model: str, backend: Backend = "auto") -> Literal["onnx", "torch"]:
    """``onnx`` for a local BERT folder with safetensors and tokenizer.json, else ``torch``."""
    if backend != "auto":
        return backend
    folder = Path(model)
    if not (folder / "config.json").is_file() or not (folder / TOKENIZER_FILE).is_file():
        return "torch"
    from r3_service.encoder.bert_onnx import check_config

    config = json.loads((folder / "config.json").read_text())
    try:
        check_config(config)
    except (ValueError, KeyError):
        return "torch"
    has_weights = (folder / "model.safetensors").is_file() or (
        folder / "model.safetensors.index.json"
    ).is_file()
    return "onnx" if has_weights else "torch"


def _export_with_onnx(folder: Path, raw: Path, out: Path) -> SourceInfo:
    """Build the BERT graph from the folder's safetensors; copy its tokenizer.json."""
    from r3_service.encoder.bert_onnx import build_bert_onnx, load_folder_weights

    config = json.loads((folder / "config.json").read_text())
    build_bert_onnx(load_folder_weights(folder), config, raw, pooling=False)
    source_tokenizer = folder / TOKENIZER_FILE
    if not source_tokenizer.is_file():
        raise FileNotFoundError(f"{folder}: no {TOKENIZER_FILE} (export with --backend torch)")
    shutil.copyfile(source_tokenizer, out / TOKENIZER_FILE)
    return SourceInfo(
        model_type=str(config["model_type"]),
        hidden_size=int(config["hidden_size"]),
        num_attention_heads=int(config["num_attention_heads"]),
        max_position_embeddings=int(config.get("max_position_embeddings", 512)),
        pad_token_id=_pad_token_id(folder, config),
    )


def _pad_token_id(folder: Path, config: dict[str, Any]) -> int:
    """The tokenizer's padding token id (``tokenizer_config.json``), else the config's, else 0."""
    from tokenizers import Tokenizer

    settings = folder / "tokenizer_config.json"
    pad = json.loads(settings.read_text()).get("pad_token") if settings.is_file() else None
    if isinstance(pad, dict):
        pad = pad.get("content")
    if isinstance(pad, str):
        token_id = Tokenizer.from_file(str(folder / TOKENIZER_FILE)).token_to_id(pad)
        if token_id is not None:
            return int(token_id)
    return int(config.get("pad_token_id") or 0)


def _export_with_torch(model: str, raw: Path, out: Path, *, local_files_only: bool) -> SourceInfo:
    """optimum's ``main_export`` (the ``export`` extra); tokenizer by transformers."""
    import transformers
    from optimum.exporters.onnx import main_export
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model, local_files_only=local_files_only)
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local_files_only)
    if not tokenizer.is_fast:
        raise ValueError(f"{model}: a fast tokenizer (tokenizer.json) is required")
    # Quiet the notes that optimum's own calls trigger (torch_dtype deprecation, "opset 17 is
    # lower than recommended": 17 is deliberate, the graph bert_onnx.py reproduces).
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    optimum_logger = logging.getLogger("optimum")
    optimum_level = optimum_logger.level
    optimum_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.onnx tracer warnings
            main_export(
                model,
                output=raw.parent,
                task="feature-extraction",
                library_name="transformers",
                opset=17,
                device="cpu",
                local_files_only=local_files_only,
                do_validation=False,
            )
    finally:
        transformers.logging.set_verbosity(verbosity)
        optimum_logger.setLevel(optimum_level)
    tokenizer.save_pretrained(out)
    return SourceInfo(
        model_type=str(config.model_type),
        hidden_size=int(config.hidden_size),
        num_attention_heads=int(getattr(config, "num_attention_heads", 0)),
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 512)),
        pad_token_id=int(tokenizer.pad_token_id or 0),
    )


def _optimize(src: Path, dst: Path, info: SourceInfo, *, dtype: Dtype, optimize: bool) -> None:
    """Fuse attention/LayerNorm/GELU with ORT's transformer optimizer; fp16 if asked."""
    model_type = info.model_type
    if not optimize or model_type not in _FUSABLE:
        if dtype == "fp16":
            raise ValueError(f"fp16 needs graph optimisation, unsupported for {model_type!r}")
        shutil.copyfile(src, dst)
        return
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(src),
        model_type="bert",
        num_heads=info.num_attention_heads,
        hidden_size=info.hidden_size,
        opt_level=0,
        use_gpu=dtype == "fp16",
    )
    logger.info("fused operators: %s", optimized.get_fused_operator_statistics())
    if dtype == "fp16":
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(dst))


def add_mean_pooling(src: Path, dst: Path) -> None:
    """Append mean pooling to the graph in file ``src``; write it to ``dst``."""
    import onnx

    onnx.save(append_mean_pooling(onnx.load(str(src))), str(dst))


def append_mean_pooling(model: Any) -> Any:
    """Append mean pooling over non-padding tokens to an ONNX ``ModelProto``, in fp32.

    The graph then outputs ``sentence_embedding`` (batch, hidden) instead of the
    hidden states (batch, seq, hidden): on a GPU, only the pooled vectors leave the
    device. The pooling is sum(h * mask) / max(sum(mask), 1), as ``mean_pool``.
    """
    import onnx
    from onnx import TensorProto, helper

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
    return model


def _quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the weights (for CPU)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" note, logged on the root logger
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            # Fused contrib ops defeat shape inference; their tensors are fp32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
