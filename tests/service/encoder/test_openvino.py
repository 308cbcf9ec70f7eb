"""The OpenVINO backend against ONNX Runtime on the same exported folders."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from r3_service.encoder import load_encoder
from r3_service.encoder.openvino import (
    OpenVinoEncoder,
    PrecisionUnsupportedError,
    check_precision,
    cpu_capabilities,
)

TEXTS = [
    "hi",
    "What is the capital of France?",
    "Explain, step by step, why the sky is blue and why sunsets are red. " * 6,
    "A list: apples, pears, plums, cherries, grapes, figs, dates, limes, lemons.",
    "word " * 300,  # truncated on the left to the profile's max length
]


def test_bf16_is_refused_on_a_cpu_without_bf16_units() -> None:
    with pytest.raises(PrecisionUnsupportedError, match="bf16 units"):
        check_precision("bf16", ["FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT"])
    check_precision("bf16", ["FP32", "BF16", "INT8"])
    check_precision("fp32", ["FP32"])
    with pytest.raises(ValueError, match="fp16"):
        check_precision("fp16", ["FP32", "FP16"])


class _CoreWithout:
    """OpenVINO's core, except that its CPU reports no bf16 (a CPU such as this one)."""

    def __init__(self) -> None:
        import openvino as ov

        self.core = ov.Core()

    def get_property(self, device: str, name: str) -> Any:
        value = self.core.get_property(device, name)
        if name == "OPTIMIZATION_CAPABILITIES":
            return [c for c in value if c != "BF16"]
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


def test_the_encoder_refuses_bf16_at_start_when_the_probe_says_no(minilm_dir: Path) -> None:
    with pytest.raises(PrecisionUnsupportedError, match="Use fp32"):
        OpenVinoEncoder(minilm_dir, precision="bf16", core=_CoreWithout())


def test_bf16_on_this_cpu_runs_or_is_refused(minilm_dir: Path) -> None:
    """The real probe: where the CPU has bf16 units the embeddings stay close to fp32
    (relevance error well under int8's); elsewhere the start is refused."""
    import openvino as ov

    if "BF16" not in cpu_capabilities(ov.Core()):
        with pytest.raises(PrecisionUnsupportedError):
            OpenVinoEncoder(minilm_dir, precision="bf16")
        return
    fp32 = OpenVinoEncoder(minilm_dir).encode(TEXTS)
    bf16 = OpenVinoEncoder(minilm_dir, precision="bf16").encode(TEXTS)
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert np.all(cos > 0.99), cos


@pytest.mark.parametrize("folder", ["minilm_dir", "tiny_bert_dir"])
def test_fp32_matches_onnx_runtime_for_any_batch_shape(
    folder: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(folder)
    ort = load_encoder(path, provider="cpu")
    ov = load_encoder(path, backend="openvino")
    assert isinstance(ov, OpenVinoEncoder) and ov.precision == "fp32"
    ids = ort.tokenize(TEXTS)
    assert [list(i) for i in ov.tokenize(TEXTS)] == [list(i) for i in ids]
    # batches of 1 to all texts, in an order that changes the padded width each time
    for size in (1, 2, 3, len(ids)):
        for start in range(0, len(ids), size):
            batch = ids[start : start + size]
            np.testing.assert_allclose(
                ov.embed_tokens(batch), ort.embed_tokens(batch), rtol=0, atol=2e-5
            )


def test_concurrent_calls_from_two_threads_get_their_own_answers(minilm_dir: Path) -> None:
    encoder = OpenVinoEncoder(minilm_dir)
    ids = encoder.tokenize(TEXTS)
    expected = [encoder.embed_tokens([i]) for i in ids]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(order: list[int]) -> None:
        try:
            start.wait()
            for _ in range(5):
                for k in order:
                    np.testing.assert_array_equal(encoder.embed_tokens([ids[k]]), expected[k])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(order,))
        for order in (list(range(len(ids))), list(reversed(range(len(ids)))))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_settings_choose_the_backend_and_the_classifier_follows() -> None:
    from r3_service.config import Settings

    plain = Settings()
    assert plain.encoder_options()["backend"] == "onnxruntime"
    assert plain.encoder_options()["precision"] == "fp32"
    ov = Settings(backend="openvino", inference_precision="bf16")
    assert ov.encoder_options(classifier=True) == {**ov.encoder_options()}
    apart = Settings(backend="openvino", classifier_backend="onnxruntime")
    assert apart.encoder_options(classifier=True)["backend"] == "onnxruntime"
    with pytest.raises(ValueError, match="bf16 needs the openvino backend"):
        Settings(inference_precision="bf16")
    with pytest.raises(ValueError, match="needs the openvino backend"):
        Settings(backend="openvino", inference_precision="bf16", classifier_backend="onnxruntime")
    with pytest.raises(ValueError, match="R3_PROVIDER=cuda"):
        Settings(backend="openvino", provider="cuda")


def _score(url: str, typed: bool) -> dict[str, Any]:
    import json

    import httpx

    from r3_service.data import ALPACAFARM_QTYPE

    rows = json.loads(ALPACAFARM_QTYPE.read_text())[:24]
    body = {
        "query": [r["input"] for r in rows],
        "response": [rows[(i + i % 2) % len(rows)]["output"] for i in range(len(rows))],
        "reference": [r["output"] for r in rows],
        "qtype": [r["qtype"] if typed else None for r in rows],
    }
    answer = httpx.post(url + "/reward", json=body, timeout=120)
    answer.raise_for_status()
    return dict(answer.json())


def test_the_service_on_openvino_fp32_gives_onnx_runtime_s_rewards(
    minilm_dir: Path, live_server: str, server_factory: Any
) -> None:
    """A real server with R3_BACKEND=openvino against the default one (ONNX Runtime), same
    items, qtype given and from the classifier (which follows the backend)."""
    import httpx

    server = server_factory(minilm_dir, env={"R3_BACKEND": "openvino"})
    server.wait_ready(timeout=120)
    info = httpx.get(server.url + "/v1/info").json()
    assert (info["backend"], info["precision"]) == ("openvino", "fp32")
    assert info["classifier"]["backend"] == "openvino"
    default = httpx.get(live_server + "/v1/info").json()
    assert (default["backend"], default["precision"]) == ("onnxruntime", "fp32")
    for typed in (True, False):
        ours, theirs = _score(server.url, typed), _score(live_server, typed)
        assert ours["qtype"] == theirs["qtype"]
        np.testing.assert_allclose(ours["rewards"], theirs["rewards"], rtol=0, atol=1e-4)


def test_r3_serve_refuses_bf16_before_the_port_opens_on_a_cpu_without_it(
    minilm_dir: Path, server_factory: Any
) -> None:
    import openvino as ov

    server = server_factory(
        minilm_dir, env={"R3_BACKEND": "openvino", "R3_INFERENCE_PRECISION": "bf16"}
    )
    if "BF16" in cpu_capabilities(ov.Core()):  # a CPU with bf16 units: it serves, and says so
        server.wait_ready(timeout=120)
        import httpx

        assert httpx.get(server.url + "/v1/info").json()["precision"] == "bf16"
        return
    assert server.proc.wait(timeout=120) != 0
    log = server.log_path.read_text()
    assert "bf16 units" in log and "Use fp32" in log, log


def test_r3_serve_warns_that_bf16_changes_rewards_where_the_cpu_has_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The start-up check with the probe faked to report bf16 units: no refusal, and the
    warning names the measured error; with the real probe on a CPU without them: refused."""
    import openvino as ov

    import r3_service.encoder.openvino as backend
    from r3_service.cli import BF16_MEASURED, check_backend
    from r3_service.config import Settings

    settings = Settings(backend="openvino", inference_precision="bf16")
    if "BF16" not in cpu_capabilities(ov.Core()):
        with pytest.raises(SystemExit, match="bf16 units"):
            check_backend(settings)
    monkeypatch.setattr(backend, "cpu_capabilities", lambda core: ["FP32", "BF16", "INT8"])
    with caplog.at_level("WARNING", logger="r3-serve"):
        check_backend(settings)
    assert any(BF16_MEASURED in r.getMessage() for r in caplog.records), caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="r3-serve"):
        check_backend(Settings(backend="openvino"))  # fp32: nothing to warn about
    assert not caplog.records
