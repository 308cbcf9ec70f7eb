"""Scale-out with OpenRLHF: converted rows score the same through ``/openrlhf/reward``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from r3_client import Client
from r3_trainer.data import Example
from r3_trainer.openrlhf import label, launch_command, main

ROWS = [
    Example("Name a primary colour.", "Red is a primary colour.", "CONSTRAINED"),
    Example("Tell me about the sea.", None, "OPENENDED"),
    Example("What is two plus two?", "Four.", None),
]


def test_labels_and_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads(label(ROWS[0])) == {
        "reference": "Red is a primary colour.",
        "qtype": "CONSTRAINED",
    }
    assert json.loads(label(ROWS[1])) == {"qtype": "OPENENDED"}
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"input": e.input, "output": e.output}) + "\n" for e in ROWS)
    )
    assert main([str(data), str(tmp_path / "o.jsonl"), "--reward-url", "http://rm:8000/"]) == 0
    out = capsys.readouterr().out
    assert "--remote_rm_url http://rm:8000/openrlhf/reward" in out
    assert "--label_key label" in out and "--lora_rank 8" in out
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert rows[0] == {"input": ROWS[0].input, "label": json.dumps({"reference": ROWS[0].output})}
    assert "--init_kl_coef 0.2" in launch_command("p.jsonl", "http://x")


@pytest.mark.integration
def test_openrlhf_route_scores_converted_rows_like_reward(live_server: str) -> None:
    responses = ["Red.", "The sea is vast, deep and full of life.", "Four."]
    prompts = [f"<|im_start|>user\n{e.input}<|im_end|>\n<|im_start|>assistant\n" for e in ROWS]
    body = {
        "query": [p + r for p, r in zip(prompts, responses)],
        "prompts": prompts,
        "labels": [label(e) for e in ROWS],
    }
    got = httpx.post(live_server + "/openrlhf/reward", json=body, timeout=60).json()["rewards"]
    with Client(base_url=live_server) as client:
        expected = client.reward(
            query=[e.input for e in ROWS],
            response=responses,
            reference=[e.output for e in ROWS],
            qtype=[e.qtype for e in ROWS],
        ).rewards
    assert got == pytest.approx(expected, abs=1e-5)
