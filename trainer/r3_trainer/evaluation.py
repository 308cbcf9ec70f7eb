"""Evaluation on held-out prompts during training: reward, length, query copies, samples."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from r3_trainer import checkpoint as ckpt
from r3_trainer.logging_utils import format_table
from r3_trainer.rewards import Scores

if TYPE_CHECKING:
    from r3_trainer.trainer import PPOTrainer

log = logging.getLogger(__name__)


def copy_flags(scores: Scores, n: int, device: Any) -> torch.Tensor:
    """1.0 where a response copies its query, per the reward; NaN where it did not say."""
    if scores.copies_query is None:
        return torch.full((n,), float("nan"), device=device)
    return torch.tensor([float(c) for c in scores.copies_query], device=device)


def evaluate(trainer: PPOTrainer) -> dict[str, Any]:
    """Reward and length on the held-out prompts; logs a sample table (main process).

    Samples under a forked RNG seeded with ``cfg.seed``: the training streams are untouched.
    """
    cfg, examples = trainer.cfg, trainer.eval_examples
    if not examples or not trainer.is_main:
        return {}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # leaves the training RNG untouched
        torch.manual_seed(cfg.seed)
        samples = trainer.sample(examples, do_sample=not cfg.eval_greedy)
    scores = trainer.score(examples, samples.texts)
    rollouts = trainer.rollouts(samples, scores)
    lengths = rollouts.lengths.tolist()
    rewards = scores.rewards
    shown = [
        (e.input, r, s, int(n)) for e, r, s, n in zip(examples, rollouts.texts, rewards, lengths)
    ][: cfg.eval_samples]
    table = format_table(["prompt", "response", "reward", "tokens"], shown)
    copies = copy_flags(scores, len(rollouts), trainer.device)
    row = {
        "eval_reward_mean": sum(rewards) / len(rewards),
        "eval_reward_std": float(torch.tensor(rewards).std()) if len(rewards) > 1 else 0.0,
        "eval_response_length_mean": sum(lengths) / len(lengths),
        "eval_query_copy_rate": float(copies.mean()),
    }
    log.info(
        "eval at step %d: reward %.4f, length %.1f tokens, copies %.0f%%\n%s",
        trainer.step,
        row["eval_reward_mean"],
        row["eval_response_length_mean"],
        100 * row["eval_query_copy_rate"],
        table,
    )
    if trainer.metrics is not None:
        trainer.metrics.text("eval/samples", table, trainer.step)
    return row


def baseline_eval(trainer: PPOTrainer) -> None:
    """Evaluate the untrained policy as step 0, leaving the RNG streams as they were."""
    rng = ckpt.get_rng_state()
    row = evaluate(trainer)
    ckpt.load_rng_state(rng)
    if row and trainer.metrics is not None:
        trainer.metrics.log({"step": 0, **row})
