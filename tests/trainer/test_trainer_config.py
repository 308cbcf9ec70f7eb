"""The config: paper defaults, one-line docs, files and flags, and the docs table."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r3_trainer.config import PPOConfig, config_from_args, config_table, field_docs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "trainer.md"


def test_paper_defaults() -> None:
    cfg = PPOConfig()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.05)
    assert cfg.lora_target_modules == ["q_proj", "v_proj"] and cfg.use_lora
    assert (cfg.learning_rate, cfg.batch_size, cfg.mini_batch_size) == (1e-5, 16, 2)
    assert (cfg.gradient_accumulation_steps, cfg.ppo_epochs) == (4, 4)
    assert (cfg.gamma, cfg.lam, cfg.cliprange, cfg.cliprange_value) == (1.0, 0.95, 0.2, 0.2)
    assert cfg.vf_coef == 1.0
    assert (cfg.adap_kl_ctrl, cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon) == (
        True,
        0.2,
        6.0,
        10000,
    )
    assert cfg.use_score_scaling and cfg.use_score_norm and cfg.score_clip == 10.0
    assert (cfg.top_p, cfg.top_k, cfg.max_new_tokens) == (1.0, 0, 512)
    assert cfg.model is None  # the bundled SmolLM2-135M-Instruct


def test_every_field_has_a_one_line_doc() -> None:
    docs = field_docs()
    assert list(docs) == [f.name for f in dataclasses.fields(PPOConfig)]
    for name, doc in docs.items():
        assert doc and "\n" not in doc and len(doc) <= 100, name


def test_file_then_flags(tmp_path: Path) -> None:
    """Defaults < the file < flags, whatever the order of --config among the flags."""
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump(
            {
                "steps": 7,
                "batch-size": 4,
                "mini_batch_size": 1,
                "use_lora": False,
                "score_clip": "none",
                "lora_target_modules": ["q_proj"],
                "reward_options": {"relevance": False},
            }
        )
    )
    path = str(tmp_path / "c.yaml")
    for argv in (["--config", path, "--steps", "9"], ["--steps", "9", "--config", path]):
        cfg, _ = config_from_args(argv)
        assert (cfg.steps, cfg.batch_size, cfg.mini_batch_size, cfg.use_lora) == (9, 4, 1, False)
        assert cfg.score_clip is None and cfg.lora_target_modules == ["q_proj"]
        assert cfg.reward_options == {"relevance": False} and cfg.lam == 0.95  # untouched
    cfg, _ = config_from_args(
        ["--config", path, "--use-lora", "--lora-target-modules", "k_proj", "v_proj"]
    )
    assert cfg.use_lora and cfg.lora_target_modules == ["k_proj", "v_proj"]
    cfg, _ = config_from_args(["--config", path, "--reward-options", '{"relevance": true}'])
    assert cfg.reward_options == {"relevance": True}
    (tmp_path / "c.json").write_text(json.dumps({"reward_options": {"relevance": False}}))
    cfg, _ = config_from_args(["--config", str(tmp_path / "c.json")])
    assert cfg.reward_options == {"relevance": False}


def test_flags() -> None:
    cfg, _ = config_from_args(
        [
            "--reward-url", "http://rm:8000",
            "--model", "org/model",
            "--dataset", "d.jsonl",
            "--steps", "3",
            "--batch-size", "8",
            "--max-new-tokens", "64",
            "--output-dir", "out",
            "--resume",
            "--no-use-lora",
            "--reward-options", '{"length_incentive": false}',
            "--lora-target-modules", "q_proj", "k_proj",
            "--score-clip", "none",
            "--stop-strings",
            "--query-format", "text",
            "--alpaca-template",
            "--no-eval-greedy",
            "--learning-rate", "2e-5",
        ]
    )  # fmt: skip
    assert cfg.reward_url == "http://rm:8000" and cfg.model == "org/model"
    assert (cfg.dataset, cfg.steps, cfg.batch_size, cfg.max_new_tokens) == ("d.jsonl", 3, 8, 64)
    assert cfg.output_dir == "out" and cfg.resume == "latest" and not cfg.use_lora
    assert cfg.reward_options == {"length_incentive": False}
    assert cfg.lora_target_modules == ["q_proj", "k_proj"]
    assert cfg.score_clip is None and cfg.stop_strings == []
    assert cfg.query_format == "text" and cfg.alpaca_template and not cfg.eval_greedy
    assert cfg.learning_rate == 2e-5
    assert cfg.service_options() == {
        "length_incentive": False,
        "query_format": "text",
        "stop_strings": [],
    }
    cfg, _ = config_from_args(["--resume", "out/checkpoints/step-000010", "--stop-strings", "A"])
    assert cfg.resume == "out/checkpoints/step-000010" and cfg.stop_strings == ["A"]
    cfg, _ = config_from_args([])
    assert cfg == PPOConfig() and cfg.stop_strings is None
    assert cfg.service_options() == {"query_format": "alpaca"}  # the service's stop strings


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        config_from_args(["--batch-size", "3", "--mini-batch-size", "2"])
    (tmp_path / "c.yaml").write_text("no_such_setting: 1\n")
    with pytest.raises(SystemExit):
        config_from_args(["--config", str(tmp_path / "c.yaml")])
    with pytest.raises(SystemExit):
        config_from_args(["--steps", "many"])
    with pytest.raises(SystemExit):
        config_from_args(["--reward-options", "[1]"])
    with pytest.raises(ValueError):
        PPOConfig(kl_penalty="full")
    with pytest.raises(ValueError, match="query_format"):
        PPOConfig(query_format="chat")
    with pytest.raises(ValueError, match="stop_strings"):
        PPOConfig(reward_options={"stop_strings": ["x"]})
    with pytest.raises(ValueError, match="advantage_estimator"):
        PPOConfig(advantage_estimator="grpo")
    with pytest.raises(ValueError, match="multiple of samples_per_prompt"):
        PPOConfig(batch_size=16, samples_per_prompt=3)
    with pytest.raises(ValueError, match="needs samples_per_prompt >= 2"):
        PPOConfig(advantage_estimator="rloo")
    PPOConfig(batch_size=16, samples_per_prompt=4, advantage_estimator="group_norm")


def test_the_trainer_talks_to_the_service_only_through_the_client() -> None:
    """No module of r3_trainer imports the service package."""
    import ast

    for path in sorted((ROOT / "trainer" / "r3_trainer").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "r3_service" for n in names), path.name


def test_print_config_runs_as_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "r3_trainer.cli", "--print-config", "--steps", "5"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = yaml.safe_load(out)
    assert data["steps"] == 5 and data["lora_r"] == 8


def test_docs_hold_the_config_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert config_table() in text, "regenerate with: python -m r3_trainer.config > table"


def test_examples() -> None:
    from r3_trainer.data import load_examples

    paper = yaml.safe_load((ROOT / "examples" / "ppo_paper.yaml").read_text())
    defaults = PPOConfig().to_dict()
    assert {k: defaults[k] for k in paper} == paper  # the file spells out the defaults
    rows = load_examples(ROOT / "examples" / "prompts.jsonl")
    assert len(rows) >= 20 and {r.qtype for r in rows} == {"OPENENDED", "CONSTRAINED"}
    subprocess.run(["bash", "-n", str(ROOT / "examples" / "train_demo.sh")], check=True)


def test_the_trainer_extra_declares_the_client() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    trainer = project["optional-dependencies"]["trainer"]
    assert any(dep.replace(" ", "").startswith("r3-client") for dep in trainer)
