"""The console scripts, the settings, and the embedded-default start path.

The settings table of the docs is checked in test_config.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from r3_service.config import Settings
from r3_service.encoder import EncoderProfile


def test_settings_read_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3_MAX_BATCH_TOKENS", "4096")
    monkeypatch.setenv("R3_PROVIDER", "cpu")
    settings = Settings()
    assert settings.max_batch_tokens == 4096 and settings.provider == "cpu"
    monkeypatch.setenv("R3_MAX_BATCH_TOKENS", "1")
    with pytest.raises(ValueError):
        Settings()


def test_batch_limits_default_by_device() -> None:
    assert Settings().batch_limits("cpu") == (1024, 32)
    assert Settings().batch_limits("cuda") == (16384, 128)
    assert Settings(max_batch_tokens=4096).batch_limits("cuda") == (4096, 128)


def test_r3_export_cli_writes_contriever_folder(tiny_bert_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from r3_service.cli import export_main; export_main()",
            str(tiny_bert_source),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    profile = EncoderProfile.load(out)
    assert (profile.similarity, profile.relevance_range) == ("dot", (0.0, 3.5))
    assert (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file()


def test_serve_rejects_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "r3_service", "--model", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "r3-export" in result.stderr


@pytest.mark.integration
def test_serve_without_arguments_exports_default_once(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "cache"
    server = server_factory(None, env={"R3_CACHE_DIR": str(cache)})
    server.wait_ready(timeout=600)  # exports the encoder and the classifier
    assert httpx.get(server.url + "/v1/info").json()["model"] == "all-MiniLM-L6-v2"
    server.stop()
    exported = next((cache / "models").glob("all-MiniLM-L6-v2-*"))
    stamp = (exported / "model.onnx").stat().st_mtime_ns
    again = server_factory(None, env={"R3_CACHE_DIR": str(cache)})
    again.wait_ready(timeout=60)
    assert (exported / "model.onnx").stat().st_mtime_ns == stamp  # reused, not re-exported
    answer = httpx.post(again.url + "/reward", json={"query": ["q"], "response": ["r"]})
    assert answer.status_code == 200
