"""bench/gpu_check.sh runs end to end without a GPU: CPU parts measured, GPU parts "not run"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_gpu_check_runs_without_a_gpu_and_marks_the_gpu_parts(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHON": sys.executable, "R3_GPU_CHECK_TIMEOUT": "240"}
    env.pop("R3_GPU_MODELS", None)
    env.pop("R3_WHEELHOUSE", None)
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), str(out), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    summary = (out / "gpu_check.txt").read_text()
    assert results["cuda"] is False and "finished" in results
    model = results["models"]["bert-tiny-random-fp32"]
    assert model["dtype"] == "fp32" and (Path(model["folder"]) / "model.onnx").is_file()
    assert results["models"]["bert-tiny-random-fp16"] == "not run: no CUDA device"
    assert all(v == "not run: no CUDA device" for v in results["parity"].values())
    cpu = results["throughput"]["bert-tiny-random-fp32 cpu budget 1024"]
    assert cpu["items_per_s"] > 0 and 0 < cpu["p50_s"] <= cpu["p99_s"]
    gpu = {k: v for k, v in results["throughput"].items() if "cuda" in k}
    assert gpu and all(v == "not run: no CUDA device" for v in gpu.values())
    http = results["http"]["bench_overload"]
    level = http["levels"][0]
    assert level["capacity_items_per_s"] > 0 and level["goodput_items_per_s"] > 0
    assert "not run: no CUDA device" in summary and "goodput" in summary
    # Issue 24's case covers admission by place: 1-item probes beside 8-item requests.
    probes = results["http"]["bench_overload_small_first"]["levels"][0]
    assert probes["factor"] == 2 and sum(probes["small"].values()) > 0
    assert probes["admitted_requests"] > 0 and probes["admitted_late_requests"] >= 0
    assert "bench_overload_small_first" in summary and "1-item time" in summary
    # Issue 26: OpenVINO bf16 on the host CPU, run where it has bf16 units, else said why not.
    bf16 = results["cpu_bf16"]["bert-tiny-random-fp32"]
    if isinstance(bf16, str):
        why = ("not run: this CPU has no bf16 units", "not run: time budget")
        assert bf16.startswith(why), bf16
    else:
        assert bf16["openvino fp32"]["pass"] and bf16["openvino bf16"]["items_per_s"] > 0
    assert "[cpu_bf16]" in summary
