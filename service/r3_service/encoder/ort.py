"""ONNX Runtime backend: CUDA with io-binding when present, else tuned CPU sessions."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from r3_service.encoder.base import ExportedEncoder

logger = logging.getLogger(__name__)

Provider = Literal["auto", "cpu", "cuda"]


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity and cgroup-less containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _wants_cuda(ort: Any, provider: Provider) -> bool:
    """Whether to use the CUDA provider; preloads pip-installed CUDA/cuDNN libraries if so."""
    available = ort.get_available_providers()
    use_cuda = provider == "cuda" or (provider == "auto" and "CUDAExecutionProvider" in available)
    if use_cuda and "CUDAExecutionProvider" not in available:
        raise RuntimeError("provider 'cuda' asked for, but onnxruntime has no CUDA provider")
    if use_cuda and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu >= 1.21: find CUDA/cuDNN installed as pip wheels (nvidia-*).
        try:
            ort.preload_dlls()
        except Exception:  # the system's libraries may still be found
            logger.warning("onnxruntime.preload_dlls() failed", exc_info=True)
    return use_cuda


def _session(ort: Any, path: Path, use_cuda: bool, intra_op_threads: int, device_id: int) -> Any:
    """An inference session: CUDA (CPU for unsupported ops), or CPU tuned to share cores."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers: list[Any] = ["CPUExecutionProvider"]
    if use_cuda:
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
    else:
        options.intra_op_num_threads = intra_op_threads or available_cpus()
        options.inter_op_num_threads = 1
        # The HTTP event loop shares these cores: don't busy-wait between ops.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers)


class OrtEncoder(ExportedEncoder):
    """Mean-pooled sentence embeddings from an exported ONNX folder."""

    backend = "onnxruntime"

    @property
    def precision(self) -> str:
        """ONNX Runtime runs the export's own dtype."""
        return self.profile.dtype

    def __init__(
        self,
        folder: Path | str,
        *,
        provider: Provider = "auto",
        intra_op_threads: int = 0,
        device_id: int = 0,
        io_binding: bool = True,
    ) -> None:
        import onnxruntime as ort

        super().__init__(folder)
        use_cuda = _wants_cuda(ort, provider)
        self.session = _session(
            ort, self.folder / self.profile.onnx_file, use_cuda, intra_op_threads, device_id
        )
        # ONNX Runtime falls back to the CPU, with only a warning, when the CUDA provider
        # cannot load (e.g. cuDNN missing): binding outputs to "cuda" would then fail.
        on_gpu = "CUDAExecutionProvider" in self.session.get_providers()
        if use_cuda and not on_gpu:
            message = "the CUDA provider did not load (see ONNX Runtime's warning above)"
            if provider == "cuda":
                raise RuntimeError(message)
            logger.error("%s: running on the CPU", message)
        self.device = "cuda" if on_gpu else "cpu"
        self.device_id = device_id
        #: Run with io-binding on the GPU (outputs allocated on the device); off: plain run().
        self.io_binding = io_binding
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._output_name = self.session.get_outputs()[0].name
        logger.info(
            "loaded %s (%s, %s) on %s",
            self.profile.name,
            self.profile.dtype,
            self.profile.similarity,
            self.session.get_providers()[0],
        )

    def embed_tokens(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        feeds, mask = self.inputs(batch, self._input_names)
        if self.device == "cuda" and self.io_binding:
            output = self._run_cuda(feeds)
        else:
            output = self.session.run([self._output_name], feeds)[0]
        return self.pooled(np.asarray(output), mask)

    def _run_cuda(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run with io-binding: inputs copied once to the GPU, the output allocated there.

        With pooling in the graph, only (batch, hidden) floats come back to the host.
        """
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self._output_name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])
