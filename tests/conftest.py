"""Shared fixtures: exported models (the bundled MiniLM, a tiny random BERT) and live servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests_support import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default encoder, exported as on first start (torch-free graph builder)."""
    from r3_service.models import export_default

    out = tmp_path_factory.mktemp("minilm")
    export_default(out)
    return out


@pytest.fixture(scope="session")
def minilm_torch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default encoder exported through optimum/torch (the reference graph)."""
    pytest.importorskip("torch")
    from r3_service.models import export_default

    out = tmp_path_factory.mktemp("minilm-torch")
    export_default(out, backend="torch")
    return out


@pytest.fixture(scope="session")
def tiny_bert_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny BERT in a folder named like the paper's encoder."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from r3_service.models import bundled_model_dir

    folder = tmp_path_factory.mktemp("hub") / "contriever"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(bundled_model_dir())).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_bert_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT exported like facebook/contriever (dot product, F range [0, 3.5]), through
    optimum/torch (the torch-free builder is compared against it)."""
    from r3_service.encoder.export import export_encoder

    out = tmp_path_factory.mktemp("tiny-export")
    export_encoder(str(tiny_bert_source), out, local_files_only=True, backend="torch")
    return out


class LiveServer:
    """A real ``r3-serve`` process on a free loopback port."""

    def __init__(
        self,
        model: Path | None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Servers on models without a classifier (tiny BERT) may score untyped items as
        # OPENENDED; tests of the refusal set R3_ALLOW_NO_CLASSIFIER=false.
        full_env = {
            **os.environ,
            "R3_LOG_LEVEL": "warning",
            "R3_ALLOW_NO_CLASSIFIER": "true",
            **(env or {}),
        }
        self.log_path = log
        self._log = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        model_args = ["--model", str(model)] if model is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "r3_service", *model_args, "--port", str(self.port)],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server not ready")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            if self._log is not subprocess.DEVNULL:
                self._log.close()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def live_server_class() -> type[LiveServer]:
    """The LiveServer class, for modules that run servers with their own settings and scope."""
    return LiveServer


@pytest.fixture(scope="session")
def live_server(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real server on the exported default encoder."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    server = LiveServer(minilm_dir, env={"R3_MAX_ITEMS_PER_REQUEST": "64"}, log=log)
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[LiveServer]]:
    """Start extra servers with their own settings; all are stopped after the test."""
    started: list[LiveServer] = []

    class Factory(LiveServer):
        def __init__(
            self, model: Path | None, env: dict[str, str] | None = None, port: int | None = None
        ) -> None:
            super().__init__(model, env, log=tmp_path / f"server{len(started)}.log", port=port)
            started.append(self)

    yield Factory
    for server in started:
        if server.proc.poll() is None:
            server.stop()
    shutil.rmtree(tmp_path, ignore_errors=True)
