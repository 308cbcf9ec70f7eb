"""Scale-out with OpenRLHF: converted rows score the same through ``/openrlhf/reward``, and
the printed command parses with the installed OpenRLHF's own argument parser."""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import os
import shlex
from pathlib import Path

import httpx
import pytest

from r3_client import Client
from r3_trainer.data import Example
from r3_trainer.openrlhf import flag_style, label, launch_command, main

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
    argv = [str(data), str(tmp_path / "o.jsonl"), "--reward-url", "http://rm:8000/"]
    assert main([*argv, "--openrlhf-version", "0.11.2"]) == 0
    out = capsys.readouterr().out
    assert "--reward.remote_url http://rm:8000/openrlhf/reward" in out
    assert "--data.label_key label" in out and "--ds.lora.rank 8" in out
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert rows[0] == {"input": ROWS[0].input, "label": json.dumps({"reference": ROWS[0].output})}
    assert main([*argv, "--openrlhf-version", "0.10.1", "--reward-func"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("R3_BASE_URL=http://rm:8000 python -m openrlhf.cli.train_ppo_ray")
    assert "r3_client/integrations/openrlhf.py" in out and "--init_kl_coef 0.2" in out


@pytest.mark.parametrize(
    ("version", "style", "flags"),
    [
        ("0.11.2", "dotted", ["--reward.remote_url", "--ds.param_dtype bf16"]),
        ("0.10.2", "dotted", ["--data.max_len 1024", "--rollout.max_new_tokens 512"]),
        ("0.10.1", "max_len", ["--remote_rm_url", "--max_len 1024", "--param_dtype bf16"]),
        ("0.9.8", "max_len", ["--max_new_tokens 512"]),
        ("0.9.7", "param_dtype", ["--generate_max_len 512", "--prompt_max_len 512"]),
        ("0.9.1", "bf16", ["--bf16", "--generate_max_len 512"]),
        ("0.8.11", "bf16", ["--bf16", "--pretrain YOUR_SFT_MODEL"]),
    ],
)
def test_flags_follow_the_openrlhf_release(version: str, style: str, flags: list[str]) -> None:
    assert flag_style(version) == style
    command = launch_command("p.jsonl", "http://x", version=version)
    for flag in flags:
        assert f" {flag} " in command.replace("\\\n", " ") + " "


def _openrlhf_parser() -> argparse.ArgumentParser:
    """The argument parser of the installed ``openrlhf.cli.train_ppo_ray``: the statements of
    its ``__main__`` block up to ``parse_args``, run as written (the module itself needs GPUs)."""
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("OpenRLHF is not installed (scripts/install.sh installs it)")
    source = Path(next(iter(spec.submodule_search_locations)), "cli", "train_ppo_ray.py")
    tree = ast.parse(source.read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n))
    body = []
    for statement in block.body:
        if "parse_args" in ast.unparse(statement):
            break
        body.append(statement)
    namespace = {"argparse": argparse, "datetime": datetime.datetime, "os": os}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(source), "exec"), namespace)
    parser: argparse.ArgumentParser = namespace["parser"]
    return parser


def test_command_parses_with_installed_openrlhf() -> None:
    parser = _openrlhf_parser()
    argv = shlex.split(launch_command("p.jsonl", "http://rm:8000").replace("\\\n", " "))[3:]
    flags = [a for a in argv if a.startswith("--")]
    assert [f for f in flags if f not in parser._option_string_actions] == []  # no abbreviation
    args = parser.parse_args(argv)
    assert getattr(args, "reward.remote_url") == "http://rm:8000/openrlhf/reward"
    assert getattr(args, "ds.lora.target_modules") == ["q_proj", "v_proj"]
    old = shlex.split(launch_command("p", "http://x", version="0.10.1").replace("\\\n", " "))
    with pytest.raises(SystemExit):  # the pre-0.10.2 flags are refused by this release
        parser.parse_args(old[3:])


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
