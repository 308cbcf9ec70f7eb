"""One PPO update from a batch of rollouts: no-grad forward, targets, clipped updates.

- :func:`forward_no_grad`: log-probs and values of the policy, log-probs of the reference;
- :func:`compute_targets`: processed scores, per-token rewards (score - beta KL), advantages
  (GAE with the critic, or the group estimators' returns to go), whitened;
- :class:`PPOUpdate`: ``ppo_epochs`` passes of clipped policy (and value) losses over shuffled
  mini-batches, ``gradient_accumulation_steps`` of them per optimizer step.

The equations are the pure functions of :mod:`r3_trainer.ppo`; this module wires them to the
model, the optimizer and the processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from r3_trainer.config import PPOConfig
from r3_trainer.policy import PolicyWithValue
from r3_trainer.ppo import (
    FixedKLController,
    RunningMoments,
    entropy_from_logits,
    explained_variance,
    gae,
    group_scores,
    kl_per_token,
    masked_mean,
    masked_whiten,
    policy_loss,
    process_scores,
    returns_to_go,
    token_rewards,
    value_loss,
)
from r3_trainer.rollout import Rollouts


@dataclass
class Targets:
    """What PPO trains towards in one step, and the numbers behind it."""

    advantages: torch.Tensor
    returns: torch.Tensor
    all_scores: torch.Tensor
    processed: torch.Tensor
    non_score: torch.Tensor
    kl_coef: float
    explained_variance: float


@torch.no_grad()
def forward_no_grad(
    policy: PolicyWithValue, rollouts: Rollouts, cfg: PPOConfig, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Policy log-probs, values and reference log-probs of the rollouts (eval mode)."""
    n, width = rollouts.response_mask.shape
    logprobs = torch.zeros(n, width, device=device)
    values = torch.zeros(n, width, device=device)
    ref_logprobs = torch.zeros(n, width, device=device)
    policy.eval()
    # Rows of similar prompt and response length together: less padding to compute.
    prompt_len = rollouts.attention_mask[:, : rollouts.response_start].sum(1)
    order = sorted(range(n), key=lambda i: (int(prompt_len[i]), int(rollouts.lengths[i])))
    for start in range(0, n, cfg.forward_batch_size):
        idx = order[start : start + cfg.forward_batch_size]
        sub = rollouts.select(idx)
        w = sub.response_mask.shape[1]
        lp, _, v = policy(sub.input_ids, sub.attention_mask, sub.response_start, cfg.temperature)
        assert v is not None
        logprobs[idx, :w] = lp
        values[idx, :w] = v.float()
        ref_logprobs[idx, :w] = policy.reference_logprobs(
            sub.input_ids, sub.attention_mask, sub.response_start, cfg.temperature
        )
    mask = rollouts.response_mask.float()
    return logprobs * mask, values * mask, ref_logprobs * mask


def compute_targets(
    cfg: PPOConfig,
    rewards: Sequence[float],
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_ctl: FixedKLController,
    moments: RunningMoments,
    gather: Callable[[torch.Tensor], torch.Tensor],
) -> Targets:
    """Processed scores, per-token rewards (score - beta KL), advantages and returns."""
    raw = torch.tensor(list(rewards), dtype=torch.float32, device=old_logprobs.device)
    kl = kl_per_token(old_logprobs, ref_logprobs, cfg.kl_penalty) * mask
    all_scores = gather(raw)
    critic = cfg.advantage_estimator == "gae"
    if critic:
        processed = process_scores(
            raw,
            moments,
            cfg.use_score_scaling,
            cfg.use_score_norm,
            cfg.score_clip,
            moments_batch=all_scores,
        )
    else:  # each score against the other responses to its prompt (groups are per process)
        processed = group_scores(raw, cfg.samples_per_prompt, cfg.advantage_estimator)
    kl_coef = kl_ctl.value
    token_reward, non_score = token_rewards(processed, kl, mask, kl_coef)
    if cfg.whiten_rewards:
        token_reward = masked_whiten(token_reward, mask, shift_mean=False) * mask
    if critic:
        advantages, returns = gae(token_reward, values, mask, cfg.gamma, cfg.lam)
    else:
        advantages = returns = returns_to_go(token_reward, mask, cfg.gamma)
    ev = explained_variance(values, returns, mask)
    return Targets(
        advantages=masked_whiten(advantages, mask) * mask,
        returns=returns,
        all_scores=all_scores,
        processed=processed,
        non_score=non_score,
        kl_coef=kl_coef,
        explained_variance=ev,
    )


def updates_per_step(cfg: PPOConfig) -> int:
    """Optimizer steps per PPO step (the learning-rate schedule counts them)."""
    backward_batch = min(cfg.backward_batch_size, cfg.batch_size)
    return cfg.ppo_epochs * math.ceil(cfg.batch_size / backward_batch)


class PPOUpdate:
    """Clipped PPO updates of ``model`` (the accelerator-prepared ``policy``)."""

    def __init__(
        self,
        cfg: PPOConfig,
        policy: PolicyWithValue,
        model: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        accelerator: Any,
        mean_all: Callable[[float], float],
    ) -> None:
        self.cfg = cfg
        self.policy = policy
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.accelerator = accelerator
        self.mean_all = mean_all
        self.updates_per_step = updates_per_step(cfg)

    def run(
        self,
        rollouts: Rollouts,
        old_logprobs: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        mask: torch.Tensor,
    ) -> dict[str, float]:
        """``ppo_epochs`` passes of clipped updates over shuffled mini-batches."""
        cfg = self.cfg
        n = len(rollouts)
        backward_batch = min(cfg.backward_batch_size, n)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        sums: dict[str, float] = {}
        count = 0
        old = (old_logprobs, old_values, advantages, returns, mask)
        self.model.train()
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n).tolist()
            for b0 in range(0, n, backward_batch):
                batch = order[b0 : b0 + backward_batch]
                micro = [
                    batch[i : i + cfg.mini_batch_size]
                    for i in range(0, len(batch), cfg.mini_batch_size)
                ]
                for j, idx in enumerate(micro):
                    step_stats = self.micro_step(
                        rollouts, idx, old, len(micro), j + 1 == len(micro)
                    )
                    for key, value in step_stats.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
                if cfg.max_grad_norm is not None:
                    grad_norm = self.accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        out = {k: v / count for k, v in sums.items() if k not in ("grad_norm", "skipped")}
        if "grad_norm" in sums:
            out["grad_norm"] = sums["grad_norm"] / self.updates_per_step
        out["skipped_minibatches"] = sums.get("skipped", 0.0)
        return out

    def micro_step(
        self,
        rollouts: Rollouts,
        idx: list[int],
        old: tuple[torch.Tensor, ...],
        n_micro: int,
        sync: bool,
    ) -> dict[str, float]:
        """Forward and backward of one mini-batch (gradients accumulate); its statistics."""
        cfg = self.cfg
        old_logprobs, old_values, advantages, returns, mask = old
        sub = rollouts.select(idx)
        w = sub.response_mask.shape[1]
        m = mask[idx, :w]
        ctx = nullcontext() if sync else self.accelerator.no_sync(self.model)
        with ctx:
            logprobs, logits, vpred = self.model(
                sub.input_ids, sub.attention_mask, sub.response_start, cfg.temperature
            )
            pl = policy_loss(logprobs, old_logprobs[idx, :w], advantages[idx, :w], m, cfg.cliprange)
            vl = value_loss(
                vpred.float(), old_values[idx, :w], returns[idx, :w], m, cfg.cliprange_value
            )
            loss = pl.loss
            if cfg.advantage_estimator == "gae":  # the group estimators use no critic
                loss = loss + cfg.vf_coef * vl.loss
            ratio = self.mean_all(float(pl.ratio_mean))
            skipped = ratio > cfg.ratio_threshold  # TRL: skip a runaway mini-batch
            if skipped:
                loss = loss * 0.0
            self.accelerator.backward(loss / n_micro)
        with torch.no_grad():
            return {
                "policy_loss": float(pl.loss),
                "value_loss": float(vl.loss),
                "clipfrac": float(pl.clipfrac),
                "value_clipfrac": float(vl.clipfrac),
                "approx_kl": float(pl.approx_kl),
                "ratio_mean": ratio,
                "entropy": float(masked_mean(entropy_from_logits(logits.detach()), m)),
                "skipped": float(skipped),
            }
