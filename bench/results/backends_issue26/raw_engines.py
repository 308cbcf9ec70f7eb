"""Raw encoder speed of one engine on the exported default model (issue 26: which OpenVINO).

Run by raw_engines.sh in alternating processes; standalone (numpy, tokenizers and the engine
only), so it also runs in a venv with onnxruntime-openvino, which cannot share a venv with
onnxruntime. Texts: the 768 AlpacaFarm answers and prompts from ``--texts`` (JSON list),
length-sorted batches of at most 1,024 tokens (the service's CPU budget).

    python raw_engines.py ENGINE MODEL_DIR TEXTS_JSON OUT_NPY
    ENGINE: ort-cpu | ort-openvino | openvino
"""

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

engine, folder, texts_path, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
profile = json.loads((folder / "r3_profile.json").read_text())
tok = Tokenizer.from_file(str(folder / profile.get("tokenizer_file", "tokenizer.json")))
tok.no_padding()
tok.enable_truncation(max_length=profile["max_length"], direction=profile["truncation"])
texts = json.loads(Path(texts_path).read_text())
ids = [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(texts)]
order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
batches: list[list[int]] = []
cur: list[int] = []
for i in order:
    if cur and (len(cur) + 1) * len(ids[i]) > 1024:
        batches.append(cur)
        cur = []
    cur.append(i)
batches.append(cur)
model = str(folder / "model.onnx")
started = time.perf_counter()
if engine.startswith("ort"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    providers: list[Any] = ["CPUExecutionProvider"]
    if engine == "ort-openvino":
        providers = [("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32"})]
    sess = ort.InferenceSession(model, opts, providers=providers)

    def run(feeds):
        return sess.run(None, feeds)[0]
else:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(model),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": "2",
        },
    )
    request = compiled.create_infer_request()

    def run(feeds):
        return request.infer(feeds)[compiled.output(0)]


load_s = time.perf_counter() - started


def feeds_of(batch):
    width = max(len(ids[i]) for i in batch)
    x = np.zeros((len(batch), width), dtype=np.int64)
    m = np.zeros_like(x)
    for r, i in enumerate(batch):
        x[r, : len(ids[i])] = ids[i]
        m[r, : len(ids[i])] = 1
    return {"input_ids": x, "attention_mask": m, "token_type_ids": np.zeros_like(x)}


first = time.perf_counter()
run(feeds_of(batches[-1]))
first_ms = (time.perf_counter() - first) * 1000
emb = np.zeros((len(ids), 384), dtype=np.float32)
started = time.perf_counter()
for batch in batches:
    emb[batch] = np.asarray(run(feeds_of(batch)))
seconds = time.perf_counter() - started
np.save(out, emb)
sys.stdout.write(
    json.dumps(
        {
            "engine": engine,
            "texts_per_s": round(len(ids) / seconds, 1),
            "load_s": round(load_s, 2),
            "first_batch_ms": round(first_ms, 1),
        }
    )
    + "\n"
)
