"""The TRL rewards inside real TRL trainers (``GRPOTrainer``, ``RLOOTrainer``) against a live
R^3 server: sync and async forms, components logged through TRL's callbacks, pickling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from r3_client import Client  # noqa: E402
from r3_client.integrations.trl import AsyncR3Reward, R3Reward  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ROWS: list[dict[str, Any]] = [
    {"prompt": "What is the capital of France?", "reference": "Paris", "qtype": "constrained"},
    {"prompt": "Write a short poem about the sea.", "reference": None, "qtype": None},
]


def record(reward: Any, prompts: Any, completions: Any, kwargs: Any, out: Any) -> None:
    reward.calls.append(
        {
            "prompts": list(prompts),
            "completions": list(completions),
            "reference": list(kwargs["reference"]),
            "qtype": list(kwargs["qtype"]),
            "out": out,
        }
    )


class RecordingReward(R3Reward):
    """``R3Reward`` that keeps each call's inputs and outputs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> list[float | None]:
        out = super().__call__(prompts, completions, **kwargs)
        record(self, prompts, completions, kwargs, out)
        return out


class RecordingAsyncReward(AsyncR3Reward):
    """``AsyncR3Reward`` that keeps each call's inputs and outputs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> list[float | None]:
        out = await super().__call__(prompts, completions, **kwargs)
        record(self, prompts, completions, kwargs, out)
        return out


def tiny_policy() -> tuple[Any, Any]:
    """A random 2-layer Llama and a byte-level BPE tokenizer trained on the spot."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [r["prompt"] for r in ROWS] + ["Paris is the capital. The sea is blue and deep."]
    tok.train_from_iterator(
        corpus * 4,
        trainers.BpeTrainer(
            vocab_size=320,
            special_tokens=["<|endoftext|>", "<|pad|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids for Llama
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config), tokenizer


def run_trainer(
    tmp_path: Path, reward: Any, rows: list[dict[str, Any]], steps: int, kind: str = "grpo"
) -> Any:
    model, tokenizer = tiny_policy()
    config_cls, trainer_cls = {
        "grpo": (trl.GRPOConfig, trl.GRPOTrainer),
        "rloo": (trl.RLOOConfig, trl.RLOOTrainer),
    }[kind]
    args = config_cls(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        learning_rate=1e-3,
        beta=0.0,  # no reference model (RLOO's default would load one by name)
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = trainer_cls(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def check_rewards(trainer: Any, reward: Any, base_url: str, steps: int) -> list[Any]:
    """Each step scored 2 completions through the service, and the trainer logged them with
    their components."""
    assert trainer.state.global_step == steps
    assert len(reward.calls) == steps
    history = [h for h in trainer.state.log_history if "loss" in h]
    logged = [h["rewards/r3_reward/mean"] for h in history]
    assert len(logged) == steps
    for h in history:  # components through log_metric
        assert 0.0 < h["r3_reward/relevance"] <= 1.0
        assert h["r3_reward/length_incentive"] > 0.0
        assert h["r3_reward/failed"] == 0.0
    assert reward.failures == 0
    by_prompt = {str(r["prompt"]): r for r in ROWS}
    with Client(base_url=base_url) as client:
        for call, mean in zip(reward.calls, logged):
            assert len(call["out"]) == 2
            assert all(isinstance(r, float) for r in call["out"])
            for i, prompt in enumerate(call["prompts"]):
                key = str(prompt) if isinstance(prompt, str) else str(prompt[-1]["content"])
                row = by_prompt[key]
                assert call["reference"][i] == row["reference"]
                assert call["qtype"][i] == row["qtype"]
            # The same request sent directly gives the same rewards.
            direct = client.reward(
                query=call["prompts"],
                response=[
                    c if isinstance(c, str) else c[0]["content"] for c in call["completions"]
                ],
                reference=call["reference"],
                qtype=[q.upper() if q else None for q in call["qtype"]],
            )
            assert call["out"] == pytest.approx(direct.rewards, abs=1e-6)
            assert mean == pytest.approx(sum(call["out"]) / 2, abs=1e-5)
    return reward.calls


def test_grpo_sync_reward_standard_format(live_server: str, tmp_path: Path) -> None:
    reward = RecordingReward(base_url=live_server)
    try:
        trainer = run_trainer(tmp_path, reward, ROWS, steps=2)
    finally:
        reward.close()
    calls = check_rewards(trainer, reward, live_server, steps=2)
    assert all(isinstance(p, str) for c in calls for p in c["prompts"] + c["completions"])
    assert {c["prompts"][0] for c in calls} == {r["prompt"] for r in ROWS}


def test_grpo_async_reward_conversational_format(live_server: str, tmp_path: Path) -> None:
    from trl.trainer.utils import is_async_callable

    system = {"role": "system", "content": "Be brief."}
    rows = [{**r, "prompt": [system, {"role": "user", "content": r["prompt"]}]} for r in ROWS]
    reward = RecordingAsyncReward(base_url=live_server)
    assert is_async_callable(reward)  # TRL awaits it on its event loop
    trainer = run_trainer(tmp_path, reward, rows, steps=2)
    calls = check_rewards(trainer, reward, live_server, steps=2)
    assert [c["prompts"][0] for c in calls] in (
        [r["prompt"] for r in rows],
        [r["prompt"] for r in reversed(rows)],
    )
    for completion in [x for c in calls for x in c["completions"]]:
        assert [m["role"] for m in completion] == ["assistant"]
        assert isinstance(completion[0]["content"], str)
    # per-completion components through log_extra (TRL keeps the last step's in its table)
    logged = list(trainer._logs["extra"]["r3_reward/relevance"])
    last = calls[-1]
    with Client(base_url=live_server) as client:
        direct = client.reward(
            query=last["prompts"],
            response=[c[0]["content"] for c in last["completions"]],
            reference=last["reference"],
            qtype=[q.upper() if q else None for q in last["qtype"]],
        )
    assert logged == pytest.approx(direct.components.relevance, abs=1e-6)


def test_rloo_async_reward(live_server: str, tmp_path: Path) -> None:
    reward = RecordingAsyncReward(base_url=live_server)
    trainer = run_trainer(tmp_path, reward, ROWS, steps=2, kind="rloo")
    check_rewards(trainer, reward, live_server, steps=2)


def _score_in_child(blob: bytes, prompts: list[str], completions: list[str]) -> list[Any]:
    """In a spawned process: unpickle the rewards and call both."""
    import asyncio
    import pickle

    sync_reward, async_reward = pickle.loads(blob)
    out = [sync_reward(prompts, completions), asyncio.run(async_reward(prompts, completions))]
    sync_reward.close()
    return out


def test_rewards_pickle_and_work_in_a_spawned_process(live_server: str) -> None:
    """``AsyncGRPOTrainer`` pickles reward functions into a spawned rollout worker."""
    import multiprocessing
    import pickle

    prompts = ["Write a short poem about the sea.", "What is the capital of France?"]
    completions = ["The sea is wide and blue.", "Paris."]
    with Client(base_url=live_server) as client:
        sync_reward = R3Reward(client, on_error="none")
        direct = sync_reward(prompts, completions)  # its client is in use; still pickles
        async_reward = AsyncR3Reward(base_url=live_server, on_error=0.0)
        blob = pickle.dumps((sync_reward, async_reward))
    copy = pickle.loads(blob)
    assert (copy[0].on_error, copy[1].on_error, copy[1].__name__) == ("none", 0.0, "r3_reward")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        in_child = pool.apply(_score_in_child, (blob, prompts, completions))
    assert in_child[0] == pytest.approx(direct, abs=1e-6)
    assert in_child[1] == pytest.approx(direct, abs=1e-6)
