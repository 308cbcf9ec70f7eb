"""Build a BERT encoder's ONNX graph from its weights with ``onnx`` and numpy alone (no torch).

The graph is the one ``torch.onnx`` writes for ``transformers``' ``BertModel`` (opset 17,
scaled-dot-product attention, exact-erf GELU), node for node, so ONNX Runtime runs the same
kernels on it and returns the same numbers as on the optimum/torch export (tested bit for bit).
The mean pooling of :func:`r3_service.encoder.export.add_mean_pooling` is appended.

Entry points:

- :func:`build_bert_onnx` (weights mapping + ``config.json`` dict -> ``model.onnx``), e.g. for a
  fine-tuned or randomly initialised model held in numpy;
- :func:`export_bert_folder` (a Hugging Face folder with ``config.json``, ``*.safetensors`` and
  ``tokenizer.json`` -> a folder ``r3-serve`` loads).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: ``config.json`` ``model_type`` values whose graph this module reproduces.
SUPPORTED_MODEL_TYPES = ("bert",)
OPSET = 17
IR_VERSION = 8

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


# -- weights ---------------------------------------------------------------------------------


def read_safetensors(path: Path | str) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as a numpy array (bf16 widened to fp32)."""
    return read_safetensors_file(path)[0]


def read_safetensors_file(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (bf16 widened to fp32, read-only views) and string metadata of a
    ``.safetensors`` file. The service's one reader: ``safetensors.numpy`` cannot return
    bf16 tensors (numpy has no bf16), which checkpoints of other encoders may hold."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    metadata = dict(header.pop("__metadata__", None) or {})
    body = memoryview(data)[8 + header_len :]
    tensors: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        start, end = meta["data_offsets"]
        raw = body[start:end]
        if meta["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif meta["dtype"] in _SAFETENSORS_DTYPES:
            array = np.frombuffer(
                raw, dtype=np.dtype(_SAFETENSORS_DTYPES[meta["dtype"]]).newbyteorder("<")
            )
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        tensors[name] = array.reshape(meta["shape"])
    return tensors, metadata


def load_folder_weights(folder: Path | str) -> dict[str, np.ndarray]:
    """The weights of a Hugging Face folder (``model.safetensors`` or its shards)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"{folder}: no model.safetensors; the torch-free exporter reads safetensors only "
            "(export with --backend torch for pytorch_model.bin)"
        )
    weights: dict[str, np.ndarray] = {}
    for name in files:
        weights.update(read_safetensors(folder / name))
    return weights


def bert_weights(weights: Mapping[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """The encoder's tensors as fp32, under ``BertModel``'s names (``bert.`` prefixes dropped).

    Task heads (e.g. ``classifier.*``) and the pooler are ignored; a missing tensor raises.
    """
    stripped = {}
    for name, value in weights.items():
        for prefix in ("bert.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        stripped[name] = value
    needed = [f"embeddings.{n}" for n in _EMBEDDING_TENSORS]
    needed += [f"encoder.layer.{i}.{n}" for i in range(num_layers) for n in _LAYER_TENSORS]
    missing = [n for n in needed if n not in stripped]
    if missing:
        raise KeyError(f"BERT weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    return {n: np.ascontiguousarray(stripped[n], dtype=np.float32) for n in needed}


_EMBEDDING_TENSORS = (
    "word_embeddings.weight",
    "position_embeddings.weight",
    "token_type_embeddings.weight",
    "LayerNorm.weight",
    "LayerNorm.bias",
)
#: The linear layers of a BERT block (what LoRA adapts, and what an adapter is merged into).
BERT_LAYER_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_LAYER_TENSORS = tuple(
    f"{module}.{kind}" for module in BERT_LAYER_LINEARS for kind in ("weight", "bias")
) + tuple(
    f"{ln}.{kind}"
    for ln in ("attention.output.LayerNorm", "output.LayerNorm")
    for kind in ("weight", "bias")
)


def check_config(config: Mapping[str, Any]) -> None:
    """Refuse configs whose graph differs from the one built here."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r}: the torch-free exporter builds {SUPPORTED_MODEL_TYPES} "
            "only (use --backend torch)"
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {config.get('hidden_act')!r}: only 'gelu' is built")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are built")
    if int(config["hidden_size"]) % int(config["num_attention_heads"]):
        raise ValueError("hidden_size must be a multiple of num_attention_heads")


# -- graph -----------------------------------------------------------------------------------


class _GraphBuilder:
    """Appends nodes and initializers with unique names."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, op: str) -> str:
        self._count += 1
        return f"/{op}_{self._count}"

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        name = self._name(op_type)
        output = name + "_output_0"
        self.nodes.append(self.helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def const(self, value: np.ndarray) -> str:
        """A ``Constant`` node (as torch.onnx writes small constants)."""
        from onnx import numpy_helper

        name = self._name("Constant")
        output = name + "_output_0"
        tensor = numpy_helper.from_array(np.asarray(value), name=output)
        self.nodes.append(self.helper.make_node("Constant", [], [output], name=name, value=tensor))
        return output

    def i64(self, *values: int, scalar: bool = False) -> str:
        return self.const(np.array(values[0] if scalar else list(values), dtype=np.int64))

    def f32(self, value: float, shape: tuple[int, ...] = ()) -> str:
        return self.const(np.full(shape, value, dtype=np.float32))

    def initializer(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name=name))
        return name

    def dim(self, tensor: str, axis: int) -> str:
        """``Shape(tensor)[axis]`` as a scalar."""
        return self.op("Gather", [self.op("Shape", [tensor]), self.i64(axis, scalar=True)], axis=0)

    def unsqueeze0(self, scalar: str) -> str:
        return self.op("Unsqueeze", [scalar, self.i64(0)])


def _embeddings(g: _GraphBuilder, w: Mapping[str, np.ndarray], seq_len: str, eps: float) -> str:
    max_positions = w["embeddings.position_embeddings.weight"].shape[0]
    positions = g.const(np.arange(max_positions, dtype=np.int64)[None, :])
    end = g.op("Unsqueeze", [seq_len, g.i64(0)])
    position_ids = g.op("Slice", [positions, g.i64(0), end, g.i64(1), g.i64(1)])
    for name in ("word", "position", "token_type"):
        g.initializer(
            f"embeddings.{name}_embeddings.weight", w[f"embeddings.{name}_embeddings.weight"]
        )
    words = g.op("Gather", ["embeddings.word_embeddings.weight", "input_ids"])
    types = g.op("Gather", ["embeddings.token_type_embeddings.weight", "token_type_ids"])
    summed = g.op("Add", [words, types])
    pos = g.op("Gather", ["embeddings.position_embeddings.weight", position_ids])
    summed = g.op("Add", [summed, pos])
    return _layer_norm(g, w, "embeddings.LayerNorm", summed, eps)


def _layer_norm(
    g: _GraphBuilder, w: Mapping[str, np.ndarray], prefix: str, x: str, eps: float
) -> str:
    scale = g.initializer(f"{prefix}.weight", w[f"{prefix}.weight"])
    bias = g.initializer(f"{prefix}.bias", w[f"{prefix}.bias"])
    return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)


def _attention_bias(g: _GraphBuilder, queries: str) -> str:
    """(batch, 1, seq, seq) additive mask: 0 where attended, float32 min where padded."""
    batch = g.dim("attention_mask", 0)
    keys = g.dim("attention_mask", 1)
    mask4 = g.op("Unsqueeze", [g.op("Unsqueeze", ["attention_mask", g.i64(1)]), g.i64(2)])
    shape = g.op(
        "Concat",
        [g.unsqueeze0(batch), g.i64(1), g.unsqueeze0(queries), g.unsqueeze0(keys)],
        axis=0,
    )
    shape = g.op("Reshape", [shape, g.i64(-1)], allowzero=0)
    ones = g.op("ConstantOfShape", [g.op("Shape", [shape])], value=_tensor(np.array([1], np.int64)))
    is_minus_one = g.op("Equal", [shape, g.op("Mul", [ones, g.i64(-1, scalar=True)])])
    shape = g.op("Where", [is_minus_one, ones, shape])
    mask = g.op("Cast", [g.op("Expand", [mask4, shape])], to=1)
    inverted = g.op("Sub", [g.f32(1.0), mask])
    as_bool = g.op("Cast", [g.op("Cast", [inverted], to=9)], to=9)
    lowest = g.f32(float(np.finfo(np.float32).min))
    return g.op("Where", [as_bool, lowest, inverted])


def _tensor(value: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(value)


def _linear(g: _GraphBuilder, w: Mapping[str, np.ndarray], prefix: str, x: str) -> str:
    """``x @ W.T + b`` as MatMul on the transposed weight, then Add(bias, product)."""
    weight = g.initializer(f"{prefix}.weight.T", w[f"{prefix}.weight"].T)
    bias = g.initializer(f"{prefix}.bias", w[f"{prefix}.bias"])
    return g.op("Add", [bias, g.op("MatMul", [x, weight])])


def _self_attention(
    g: _GraphBuilder, w: Mapping[str, np.ndarray], prefix: str, x: str, bias: str, heads: int
) -> str:
    hidden = w[f"{prefix}.attention.self.query.weight"].shape[0]
    head_dim = hidden // heads
    batch = g.dim(x, 0)
    seq = g.dim(x, 1)
    query = _linear(g, w, f"{prefix}.attention.self.query", x)
    split = [
        g.op("Concat", [g.unsqueeze0(batch), g.i64(-1), g.i64(heads), g.i64(head_dim)], axis=0)
        for _ in range(3)
    ]
    q = g.op("Transpose", [g.op("Reshape", [query, split[0]], allowzero=0)], perm=[0, 2, 1, 3])
    key = _linear(g, w, f"{prefix}.attention.self.key", x)
    k = g.op("Reshape", [key, split[1]], allowzero=0)
    value = _linear(g, w, f"{prefix}.attention.self.value", x)
    v = g.op("Reshape", [value, split[2]], allowzero=0)
    v = g.op("Transpose", [v], perm=[0, 2, 1, 3])
    # torch's SDPA export: scale = 1/sqrt(head_dim), and sqrt(scale) multiplies q and k^T.
    last = g.op("Slice", [g.op("Shape", [q]), g.i64(-1), g.i64(np.iinfo(np.int64).max)])
    scale = g.op("Div", [g.f32(1.0, (1,)), g.op("Sqrt", [g.op("Cast", [last], to=1)])])
    scale = g.op("Cast", [scale], to=1)
    k_t = g.op("Transpose", [k], perm=[0, 2, 3, 1])
    q_scaled = g.op("Mul", [q, g.op("Sqrt", [scale])])
    k_scaled = g.op("Mul", [k_t, g.op("Sqrt", [scale])])
    scores = g.op("Add", [g.op("MatMul", [q_scaled, k_scaled]), bias])
    probs = g.op("Softmax", [scores], axis=-1)
    context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    merged = g.op("Concat", [g.unsqueeze0(batch), g.unsqueeze0(seq), g.i64(hidden)], axis=0)
    return g.op("Reshape", [context, merged], allowzero=0)


def _layer(
    g: _GraphBuilder, w: Mapping[str, np.ndarray], i: int, x: str, bias: str, heads: int, eps: float
) -> str:
    prefix = f"encoder.layer.{i}"
    context = _self_attention(g, w, prefix, x, bias, heads)
    attended = g.op("Add", [_linear(g, w, f"{prefix}.attention.output.dense", context), x])
    attended = _layer_norm(g, w, f"{prefix}.attention.output.LayerNorm", attended, eps)
    inner = _linear(g, w, f"{prefix}.intermediate.dense", attended)
    # Exact GELU as torch writes it: x * (erf(x / sqrt(2)) + 1) * 0.5
    erf = g.op("Erf", [g.op("Div", [inner, g.f32(float(np.float32(np.sqrt(2.0))))])])
    gelu = g.op("Mul", [g.op("Mul", [inner, g.op("Add", [erf, g.f32(1.0)])]), g.f32(0.5)])
    out = g.op("Add", [_linear(g, w, f"{prefix}.output.dense", gelu), attended])
    return _layer_norm(g, w, f"{prefix}.output.LayerNorm", out, eps)


def build_bert_graph(weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
    """``BertModel``'s ONNX graph: inputs ``input_ids``, ``attention_mask``, ``token_type_ids``
    (int64, batch x sequence), output ``last_hidden_state`` (fp32, batch x sequence x hidden).
    """
    from onnx import TensorProto, helper

    check_config(config)
    layers = int(config["num_hidden_layers"])
    w = bert_weights(weights, layers)
    eps = float(config.get("layer_norm_eps", 1e-12))
    heads = int(config["num_attention_heads"])
    g = _GraphBuilder()
    seq_len = g.dim("input_ids", 1)
    x = _embeddings(g, w, seq_len, eps)
    bias = _attention_bias(g, seq_len)
    for i in range(layers):
        x = _layer(g, w, i, x, bias, heads, eps)
    g.nodes[-1].output[0] = "last_hidden_state"  # the last LayerNorm writes the graph output
    hidden = int(config["hidden_size"])
    dims = ["batch_size", "sequence_length"]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, dims)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, hidden])
    graph = helper.make_graph(g.nodes, "bert", inputs, [output], g.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="r3-service"
    )
    model.ir_version = IR_VERSION
    return model


def build_bert_onnx(
    weights: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    out: Path | str,
    *,
    pooling: bool = True,
) -> Path:
    """Write a BERT encoder's ONNX graph to ``out`` (a ``.onnx`` file, or a folder that gets
    ``model.onnx``) and return the file's path.

    ``weights``: ``BertModel`` tensor names (a ``bert.`` prefix is dropped; heads and pooler
    are ignored), any float dtype. ``config``: the model's ``config.json`` as a dict
    (``model_type`` bert, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``layer_norm_eps``). ``pooling``: end with the mean-pooled ``sentence_embedding``
    (batch, hidden) like ``r3-export``; else with ``last_hidden_state``.
    """
    import onnx

    from r3_service.encoder.export import append_mean_pooling

    path = Path(out)
    if path.suffix != ".onnx":
        path.mkdir(parents=True, exist_ok=True)
        path = path / "model.onnx"
    model = build_bert_graph(weights, config)
    if pooling:
        model = append_mean_pooling(model)
    else:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def export_bert_folder(
    folder: Path | str, out: Path | str, *, profile: str | None = None, **kwargs: Any
) -> Any:
    """A Hugging Face BERT folder (``config.json``, safetensors, ``tokenizer.json``) to a folder
    ``r3-serve`` loads, without torch; returns its :class:`EncoderProfile`.

    ``kwargs`` go to :func:`r3_service.encoder.export.export_encoder` (``dtype``, ``optimize``,
    ``max_length``).
    """
    from r3_service.encoder.export import export_encoder

    return export_encoder(str(folder), Path(out), profile=profile, backend="onnx", **kwargs)
