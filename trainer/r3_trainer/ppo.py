"""PPO math as small pure functions on tensors (no models, no I/O).

Shapes: ``(batch, T)`` per-token tensors over the response tokens, with ``mask`` 1 on real
tokens and 0 on padding after the end of each response.

References:
- GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation", eq. 16: A_t = sum_l (gamma lambda)^l delta_{t+l},
  delta_t = r_t + gamma V(s_{t+1}) - V(s_t).
- Clipped surrogate: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7:
  L^CLIP = E_t[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)], rho_t = pi/pi_old.
- KL-penalised reward and the adaptive KL controller: Ziegler et al. 2019, "Fine-Tuning
  Language Models from Human Preferences", eq. 2 and section 2.2.
- Group baselines instead of a critic, with several responses per prompt: RLOO, Ahmadian et
  al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
  Feedback in LLMs", eq. 6 (each response's baseline is the mean score of the prompt's other
  responses); GRPO, Shao et al. 2024, "DeepSeekMath", section 4.1.2 (outcome supervision:
  A = (r - mean(r_group)) / std(r_group)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PolicyLoss",
    "RunningMoments",
    "ValueLoss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "group_scores",
    "kl_per_token",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "process_scores",
    "returns_to_go",
    "token_rewards",
    "value_loss",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is 1 (over ``dim``, or all)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the masked entries (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(x - mean) / std`` over the masked entries; the mean is added back unless shift_mean."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_per_token(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "kl"
) -> torch.Tensor:
    """Per-token KL estimate between policy and reference from sampled-token log-probs.

    ``kl``: log pi(a|s) - log pi_ref(a|s) (unbiased, Ziegler et al. eq. 2); ``abs``: its absolute
    value; ``mse``: half its square.
    """
    diff = logprobs - ref_logprobs
    if kind == "kl":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind == "mse":
        return 0.5 * diff.square()
    raise ValueError(f"unknown KL estimate {kind!r}")


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``-beta * KL_t``, plus the sequence score on each response's last token.

    R(x, y) = r(x, y) - beta log(pi(y|x) / pi_ref(y|x)) (Ziegler et al. eq. 2), spread per token.
    Returns ``(rewards, non_score_rewards)``, both zero on padding.
    """
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    last = (mask.sum(1).long() - 1).clamp_min(0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards, non_score


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16).

    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lambda A_{t+1};  V after the last
    real token is 0 (the episode ends there). Returns ``(advantages, returns = A + V)``, zero on
    padding; advantages are not whitened here.
    """
    rewards = rewards * mask
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last  # padding after the end has delta = 0
        advantages[:, t] = last
    advantages = advantages * mask
    returns = (advantages + values) * mask
    return advantages, returns


def group_scores(scores: torch.Tensor, group_size: int, kind: str = "rloo") -> torch.Tensor:
    """Scores relative to the other responses to the same prompt (no critic needed).

    ``scores`` holds ``group_size`` consecutive responses per prompt. ``rloo``: r_i minus the
    mean of the group's other k - 1 scores (Ahmadian et al. 2024, eq. 6), equal to
    k / (k - 1) (r_i - mean). ``group_norm``: (r_i - mean) / (std + 1e-6), std unbiased
    (Shao et al. 2024, 4.1.2); a group of equal scores gets 0. Prompts of different reward
    scales (R^3's CONSTRAINED rewards span [0, 5.12], OPENENDED ones mostly below 1) then
    weigh alike.
    """
    if group_size < 2:
        raise ValueError("group baselines need at least 2 responses per prompt")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    groups = scores.float().reshape(-1, group_size)
    mean = groups.mean(1, keepdim=True)
    if kind == "rloo":
        out = (groups - mean) * group_size / (group_size - 1)
    elif kind == "group_norm":
        out = (groups - mean) / (groups.std(1, keepdim=True) + 1e-6)
    else:
        raise ValueError(f"unknown group baseline {kind!r}")
    return out.reshape(scores.shape)


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{l >= 0} gamma^l r_{t+l} over each response's real tokens (REINFORCE's return).

    With group-relative scores on the last token and -beta KL per token, this is the advantage
    of the critic-free estimators (OpenRLHF's ``rloo`` and ``group_norm``). Zero on padding.
    It is GAE with no value (V = 0) and lambda = 1.
    """
    advantages, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, lam=1.0)
    return advantages


@dataclass
class PolicyLoss:
    """Clipped surrogate loss and its diagnostics."""

    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float = 0.2,
) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated to be minimised.

    L = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)), rho_t = exp(logp - logp_old).
    ``approx_kl`` is the k3 estimator mean((rho - 1) - log rho) of KL(pi_old || pi);
    ``clipfrac`` is the share of tokens where the clipped term was the active one.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLoss(loss, clipfrac, approx_kl, ratio_mean)


@dataclass
class ValueLoss:
    """Clipped value loss and its diagnostics."""

    loss: torch.Tensor
    clipfrac: torch.Tensor


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float = 0.2,
) -> ValueLoss:
    """Clipped value loss, as in PPO implementations (TRL, OpenAI baselines).

    L_V = 0.5 mean_t max((V_t - R_t)^2, (clip(V_t, V_old - eps, V_old + eps) - R_t)^2).
    """
    clipped_values = old_values + torch.clamp(
        values - old_values, -cliprange_value, cliprange_value
    )
    losses = (values - returns).square()
    losses_clipped = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(losses, losses_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((losses_clipped > losses).float(), mask)
    return ValueLoss(loss, clipfrac)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: logsumexp(z) - sum p z."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over the masked entries (nan when Var[R] is 0)."""
    var_returns = masked_var(returns, mask, unbiased=False)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask, unbiased=False) / var_returns)


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep the coefficient."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Adaptive KL coefficient (Ziegler et al. 2019, section 2.2).

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2);  beta_{t+1} = beta_t (1 + K_beta e_t),
    with K_beta = n_steps / horizon (n_steps: rollouts in the batch).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        super().__init__(init_kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move beta towards the value that keeps the KL at the target."""
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class RunningMoments:
    """Running mean and standard deviation of all scores seen (parallel Welford update).

    Starts at mean 0, std 1, as TRL's ``RunningMoments`` does.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.std = 1.0
        self.var = 1.0
        self.count = 1e-24

    def update(self, xs: torch.Tensor) -> tuple[float, float]:
        """Fold ``xs`` in; return the batch's mean and (unbiased) std."""
        xs = xs.detach().double().flatten()
        n = xs.numel()
        if n == 0:
            return float("nan"), float("nan")
        batch_var, batch_mean = torch.var_mean(xs, unbiased=False)
        delta = float(batch_mean) - self.mean
        total = self.count + n
        m2 = self.var * self.count + float(batch_var) * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.std = math.sqrt(self.var * total / max(total - 1, 1e-12))
        self.count = total
        batch_std = math.sqrt(float(batch_var) * n / (n - 1)) if n > 1 else 0.0
        return float(batch_mean), batch_std

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.std = float(state["mean"]), float(state["std"])
        self.var, self.count = float(state["var"]), float(state["count"])


def process_scores(
    scores: torch.Tensor,
    moments: RunningMoments,
    scaling: bool = True,
    norm: bool = True,
    clip: float | None = 10.0,
    moments_batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scale by the running std (and centre on the running mean), then clip (TRL's order).

    When ``scaling`` is on, ``moments`` first takes in the raw scores: ``moments_batch`` (the
    scores of all processes) if given, else ``scores``.
    """
    out = scores.float()
    if scaling:
        moments.update(out if moments_batch is None else moments_batch)
        scale = moments.std + torch.finfo(out.dtype).eps
        out = (out - moments.mean) / scale if norm else out / scale
    if clip is not None:
        out = out.clamp(-clip, clip)
    return out
