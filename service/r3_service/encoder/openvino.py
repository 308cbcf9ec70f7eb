"""OpenVINO backend (CPU): the same exported ``model.onnx``, fp32 or bf16.

bf16 runs on the CPU's bf16 units (AVX512-BF16, AMX) when the CPU has them, and is refused
at start when it does not: OpenVINO would otherwise run fp32 (or emulate bf16) without a
word, and the operator would think rewards are bf16 when they are not, or the reverse.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from r3_service.encoder.base import ExportedEncoder
from r3_service.encoder.ort import available_cpus

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
#: OpenVINO's names of the two precisions (``INFERENCE_PRECISION_HINT``).
OV_PRECISION: dict[str, str] = {"fp32": "f32", "bf16": "bf16"}


class PrecisionUnsupportedError(RuntimeError):
    """The CPU cannot run the asked precision natively."""


def cpu_capabilities(core: Any) -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can run (``OPTIMIZATION_CAPABILITIES``)."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def check_precision(precision: str, capabilities: Sequence[str]) -> None:
    """Raise unless ``precision`` runs natively on a CPU with ``capabilities``."""
    if precision not in OV_PRECISION:
        raise ValueError(f"unknown precision {precision!r}: fp32 or bf16")
    if precision == "bf16" and "BF16" not in capabilities:
        raise PrecisionUnsupportedError(
            "R3_INFERENCE_PRECISION=bf16 needs a CPU with bf16 units (AVX512-BF16 or AMX: Intel "
            "since Sapphire Rapids, AMD since Zen 4); this one has only "
            f"{', '.join(capabilities) or 'none'}. Use fp32 (the default)"
        )


class OpenVinoEncoder(ExportedEncoder):
    """Mean-pooled sentence embeddings from an exported ONNX folder, run by OpenVINO."""

    backend = "openvino"

    def __init__(
        self,
        folder: Path | str,
        *,
        precision: Precision = "fp32",
        intra_op_threads: int = 0,
        core: Any = None,
    ) -> None:
        import openvino as ov

        super().__init__(folder)
        if self.profile.dtype != "fp32":
            raise ValueError(
                f"{self.folder} is a {self.profile.dtype} export; the OpenVINO backend reads "
                "fp32 exports (its precision is R3_INFERENCE_PRECISION)"
            )
        self.core = core if core is not None else ov.Core()
        check_precision(precision, cpu_capabilities(self.core))
        self.precision = precision
        self.device = "cpu"
        started = time.perf_counter()
        model = self.core.read_model(str(self.folder / self.profile.onnx_file))
        config = {
            "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(intra_op_threads or available_cpus()),
        }
        self.compiled = self.core.compile_model(model, "CPU", config)
        #: Seconds that reading and compiling the model took (paid at start).
        self.compile_seconds = time.perf_counter() - started
        self._input_names = {p.get_any_name() for p in self.compiled.inputs}
        self._output = self.compiled.output(0)
        # One infer request per calling thread: the engine's worker and a classifier's each
        # run their own, so requests never share one.
        self._local = threading.local()
        logger.info(
            "loaded %s (%s) with OpenVINO %s on CPU in %.1f s",
            self.profile.name,
            precision,
            ov.get_version(),
            self.compile_seconds,
        )

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def embed_tokens(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        feeds, mask = self.inputs(batch, self._input_names)
        # a copy: the request reuses its output buffer on the next call
        output = np.array(self._request().infer(feeds)[self._output], dtype=np.float32)
        return self.pooled(output, mask)

    def warmup(self) -> None:
        """Run batches of a few shapes, so that the first requests do not pay for what
        OpenVINO prepares on a shape's first run."""
        ids = self.tokenize(["warm up"])[0]
        for rows, width in ((1, len(ids)), (4, 64), (16, 128)):
            self.embed_tokens([np.resize(ids, width) for _ in range(rows)])
