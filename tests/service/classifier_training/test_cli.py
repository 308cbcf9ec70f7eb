"""r3-train-classifier: a user's fine-tuned classifier replaces the shipped one; --head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from qtype_rows import toy_rows

from r3_service.classifier.runtime import CLASSIFIER_DIR, read_config
from r3_service.classifier_training.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def user_model(tiny_bert_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    return folder


def test_finetune_writes_classifier_next_to_encoder_and_server_uses_it(
    tiny_bert_source: Path,
    user_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in toy_rows(60, seed=3)) + "\n")
    code = main(
        ["--data", str(data), "--model", str(user_model), "--base", str(tiny_bert_source),
         "--epochs", "1", "--augment-copies", "1", "--batch-size", "16"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    validation = summary["validation"]
    assert validation["n"] > 0 and 0.0 <= validation["accuracy"] <= 1.0
    assert len(validation["confusion_matrix"]) == 2 and "ece" in validation
    folder = user_model / CLASSIFIER_DIR
    config = read_config(folder)
    assert config["metrics"]["validation"] == validation
    assert (folder / "adapter.safetensors").is_file()

    server = server_factory(user_model, env={"R3_ALLOW_NO_CLASSIFIER": "false"})
    server.wait_ready(timeout=120)
    info = httpx.get(server.url + "/v1/info").json()["classifier"]
    assert info["kind"] == "finetuned" and info["adapter_sha256"] == config["adapter_sha256"]
    answer = httpx.post(server.url + "/classify", json={"query": ["Write a poem.", "x"]}).json()
    assert len(answer["qtype"]) == len(answer["uncertain"]) == 2


def test_head_for_another_encoder_is_trained_and_served(
    user_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(toy_rows(60, seed=4)))
    assert main(["--data", str(data), "--model", str(user_model), "--head"]) == 0
    summary = json.loads(capsys.readouterr().out)
    head = json.loads(Path(summary["head"]).read_text())
    assert head["encoder"] == "contriever" and head["embedding_dim"] == 32

    server = server_factory(user_model, env={"R3_ALLOW_NO_CLASSIFIER": "false"})
    server.wait_ready()
    info = httpx.get(server.url + "/v1/info").json()["classifier"]
    assert info["kind"] == "head" and info["encoder"] == "contriever"
    queries = ["Write a poem about the sea.", "Translate the word cat into French, then now."]
    answer = httpx.post(server.url + "/classify", json={"query": queries}).json()
    assert answer["qtype"] == ["OPENENDED", "CONSTRAINED"]


def test_bad_rows_are_reported(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"input": "x", "qtype": "OPENENDED"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        main(["--data", str(data), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        main(["--data", str(data)])
