"""``R3Reward`` inside a real TRL ``GRPOTrainer`` against a live R^3 server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from r3_client import Client  # noqa: E402
from r3_client.integrations.trl import R3Reward  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ROWS: list[dict[str, Any]] = [
    {"prompt": "What is the capital of France?", "reference": "Paris", "qtype": "constrained"},
    {"prompt": "Write a short poem about the sea.", "reference": None, "qtype": None},
]


class RecordingReward(R3Reward):
    """``R3Reward`` that keeps each call's inputs and outputs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> list[float]:
        out = super().__call__(prompts, completions, **kwargs)
        self.calls.append(
            {
                "prompts": list(prompts),
                "completions": list(completions),
                "reference": list(kwargs["reference"]),
                "qtype": list(kwargs["qtype"]),
                "out": out,
            }
        )
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


def run_grpo(tmp_path: Path, base_url: str, rows: list[dict[str, Any]], steps: int) -> Any:
    model, tokenizer = tiny_policy()
    reward = RecordingReward(base_url=base_url)
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        learning_rate=1e-3,
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
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    try:
        trainer.train()
    finally:
        reward.close()
    return trainer, reward


def check_rewards(trainer: Any, reward: RecordingReward, base_url: str, steps: int) -> list[Any]:
    """Each step scored 2 completions through the service, and the trainer logged them."""
    assert trainer.state.global_step == steps
    assert len(reward.calls) == steps
    logged = [h["rewards/r3_reward/mean"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == steps
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


def test_grpo_standard_format(live_server: str, tmp_path: Path) -> None:
    trainer, reward = run_grpo(tmp_path, live_server, ROWS, steps=2)
    calls = check_rewards(trainer, reward, live_server, steps=2)
    assert all(isinstance(p, str) for c in calls for p in c["prompts"] + c["completions"])
    assert {c["prompts"][0] for c in calls} == {r["prompt"] for r in ROWS}


def test_grpo_conversational_format(live_server: str, tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be brief."}
    rows = [{**r, "prompt": [system, {"role": "user", "content": r["prompt"]}]} for r in ROWS]
    trainer, reward = run_grpo(tmp_path, live_server, rows, steps=2)
    calls = check_rewards(trainer, reward, live_server, steps=2)
    assert [c["prompts"][0] for c in calls] in (
        [r["prompt"] for r in rows],
        [r["prompt"] for r in reversed(rows)],
    )
    for completion in [x for c in calls for x in c["completions"]]:
        assert [m["role"] for m in completion] == ["assistant"]
        assert isinstance(completion[0]["content"], str)
