"""PPO math: GAE, clipped losses, KL penalty and controller, score processing."""

from __future__ import annotations

import math

import pytest
import torch

from r3_trainer.ppo import (
    AdaptiveKLController,
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


def gae_reference(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """GAE by the definition: A_t = sum_l (gamma lam)^l delta_{t+l}, one episode, V_T = 0."""
    T = len(rewards)
    deltas = [
        rewards[t] + gamma * (values[t + 1] if t + 1 < T else 0.0) - values[t] for t in range(T)
    ]
    adv = [sum((gamma * lam) ** k * deltas[t + k] for k in range(T - t)) for t in range(T)]
    return adv, [a + v for a, v in zip(adv, values)]


def test_gae_hand_values() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.3]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # delta = [-0.1, -0.1, 0.7];  A2 = 0.7, A1 = -0.1 + 0.95 * 0.7, A0 = -0.1 + 0.95 * A1
    a1 = -0.1 + 0.95 * 0.7
    expected = torch.tensor([[-0.1 + 0.95 * a1, a1, 0.7]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_gae_lambda_one_gives_monte_carlo_returns() -> None:
    rewards = torch.tensor([[0.1, -0.2, 0.3, 2.0]])
    values = torch.tensor([[5.0, -1.0, 0.7, 0.2]])
    _, ret = gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[2.2, 2.1, 2.3, 2.0]]))


def test_gae_lambda_zero_is_one_step_td() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.25, 0.125]])
    adv, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.0)
    expected = torch.tensor([[1 + 0.9 * 0.25 - 0.5, 2 + 0.9 * 0.125 - 0.25, 3 - 0.125]])
    torch.testing.assert_close(adv, expected)


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.99, 0.9), (0.5, 1.0)])
def test_gae_matches_reference_loop_with_padding(gamma: float, lam: float) -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 1, 3, 7]
    T = 7
    rewards = torch.randn(len(lengths), T, generator=gen)
    values = torch.randn(len(lengths), T, generator=gen)
    mask = torch.zeros(len(lengths), T)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    adv, ret = gae(rewards, values, mask, gamma, lam)  # padding holds garbage: must be ignored
    for i, n in enumerate(lengths):
        ref_adv, ref_ret = gae_reference(
            rewards[i, :n].tolist(), values[i, :n].tolist(), gamma, lam
        )
        torch.testing.assert_close(adv[i, :n], torch.tensor(ref_adv))
        torch.testing.assert_close(ret[i, :n], torch.tensor(ref_ret))
        assert adv[i, n:].abs().sum() == 0 and ret[i, n:].abs().sum() == 0


def test_token_rewards_put_score_on_last_token() -> None:
    kl = torch.tensor([[0.5, 1.0, 2.0], [1.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards, non_score = token_rewards(torch.tensor([3.0, -1.0]), kl * mask, mask, kl_coef=0.1)
    torch.testing.assert_close(non_score, torch.tensor([[-0.05, -0.1, -0.2], [-0.1, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, 2.8], [-1.1, 0.0, 0.0]]))


def test_kl_per_token_estimates() -> None:
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(kl_per_token(lp, ref, "kl"), torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(kl_per_token(lp, ref, "abs"), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(kl_per_token(lp, ref, "mse"), torch.tensor([0.125, 0.5]))
    with pytest.raises(ValueError):
        kl_per_token(lp, ref, "full")


def _ratio_logprobs(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.log(torch.tensor([ratios])), torch.zeros(1, len(ratios))


@pytest.mark.parametrize(
    ("ratio", "advantage", "loss", "clipped"),
    [
        (1.5, 1.0, -1.2, True),  # gain capped at 1 + eps
        (1.5, -1.0, 1.5, False),  # a worse action made likelier: unclipped, full penalty
        (0.5, 1.0, -0.5, False),  # a good action made less likely: unclipped
        (0.5, -1.0, 0.8, True),  # gain capped at 1 - eps
        (1.1, 1.0, -1.1, False),  # inside the trust region
    ],
)
def test_policy_loss_hand_values(
    ratio: float, advantage: float, loss: float, clipped: bool
) -> None:
    logprobs, old = _ratio_logprobs([ratio])
    logprobs.requires_grad_(True)
    out = policy_loss(logprobs, old, torch.tensor([[advantage]]), torch.ones(1, 1), cliprange=0.2)
    assert out.loss.item() == pytest.approx(loss, abs=1e-6)
    assert out.clipfrac.item() == float(clipped)
    out.loss.backward()
    assert logprobs.grad is not None
    # A clipped token gives no gradient; an unclipped one gives -A * ratio.
    expected_grad = 0.0 if clipped else -advantage * ratio
    assert logprobs.grad.item() == pytest.approx(expected_grad, abs=1e-6)


def test_policy_loss_ignores_padding_and_reports_kl() -> None:
    logprobs, old = _ratio_logprobs([1.5, 100.0])
    mask = torch.tensor([[1.0, 0.0]])
    out = policy_loss(logprobs, old, torch.tensor([[1.0, 1.0]]), mask, cliprange=0.2)
    assert out.loss.item() == pytest.approx(-1.2)
    assert out.ratio_mean.item() == pytest.approx(1.5)
    assert out.approx_kl.item() == pytest.approx(0.5 - math.log(1.5))
    same = policy_loss(old, old, torch.ones(1, 2), torch.ones(1, 2))
    assert same.approx_kl.item() == 0 and same.clipfrac.item() == 0


def test_value_loss_hand_values() -> None:
    old = torch.tensor([[1.0, 1.0, 1.0]])
    returns = torch.tensor([[2.0, 2.0, 0.0]])
    new = torch.tensor([[1.5, 1.1, 1.5]])
    out = value_loss(new, old, returns, torch.ones(1, 3), cliprange_value=0.2)
    # token 0: max((1.5-2)^2, (1.2-2)^2) = 0.64 (clipped);  token 1: (1.1-2)^2 = 0.81
    # token 2: max((1.5-0)^2, (1.2-0)^2) = 2.25 (unclipped)
    assert out.loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 2.25) / 3)
    assert out.clipfrac.item() == pytest.approx(1 / 3)


def test_masked_whiten_and_mean() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    w = masked_whiten(x, mask)[mask.bool()]
    assert w.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w.std().item() == pytest.approx(1.0, abs=1e-4)


def test_entropy_and_explained_variance() -> None:
    uniform = torch.zeros(2, 8)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2,), math.log(8)))
    assert entropy_from_logits(torch.tensor([[0.0, -1e4]])).item() == pytest.approx(0, abs=1e-6)
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)


def test_adaptive_kl_controller_hand_values() -> None:
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(12.0, n_steps=16)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 16 / 10000))
    before = ctl.value
    ctl.update(6.0, n_steps=16)  # on target: unchanged
    assert ctl.value == before
    ctl.update(6.6, n_steps=16)  # error +0.1
    assert ctl.value == pytest.approx(before * (1 + 0.1 * 16 / 10000))
    before = ctl.value
    ctl.update(0.0, n_steps=16)  # error clipped to -0.2
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 16 / 10000))
    ctl.update(float("nan"), n_steps=16)
    assert math.isfinite(ctl.value)
    restored = AdaptiveKLController(1.0, 1.0, 1)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value


def test_adaptive_kl_controller_reaches_target() -> None:
    # A toy policy whose KL falls as beta rises: KL = 1.2 / beta. The fixed point is beta = 0.2.
    ctl = AdaptiveKLController(1.0, target=6.0, horizon=100)
    for _ in range(2000):
        ctl.update(1.2 / ctl.value, n_steps=16)
    assert ctl.value == pytest.approx(0.2, rel=1e-2)


def test_fixed_kl_controller() -> None:
    ctl = FixedKLController(0.3)
    ctl.update(100.0, 16)
    assert ctl.value == 0.3


def test_running_moments_match_full_statistics() -> None:
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, generator=gen) * 3 + 1 for n in (16, 5, 16, 2)]
    moments = RunningMoments()
    for b in batches:
        batch_mean, batch_std = moments.update(b)
        assert batch_mean == pytest.approx(b.mean().item(), abs=1e-6)
        assert batch_std == pytest.approx(b.std().item(), abs=1e-6)
    everything = torch.cat(batches).double()
    assert moments.mean == pytest.approx(everything.mean().item(), abs=1e-9)
    assert moments.std == pytest.approx(everything.std().item(), abs=1e-9)


def test_process_scores_scale_norm_clip() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    moments = RunningMoments()
    out = process_scores(scores, moments, scaling=True, norm=True, clip=None)
    torch.testing.assert_close(out, (scores - 2.5) / scores.std(), rtol=1e-5, atol=1e-5)
    only_scaled = process_scores(scores, RunningMoments(), scaling=True, norm=False, clip=None)
    torch.testing.assert_close(only_scaled, scores / scores.std(), rtol=1e-5, atol=1e-5)
    clipped = process_scores(torch.tensor([-50.0, 50.0]), RunningMoments(), scaling=False, clip=10)
    torch.testing.assert_close(clipped, torch.tensor([-10.0, 10.0]))
    m = RunningMoments()
    process_scores(torch.tensor([0.0]), m, moments_batch=torch.tensor([1.0, 3.0]))
    assert m.mean == pytest.approx(2.0)


def test_group_scores_rloo_hand_values() -> None:
    """Each score minus the mean of its prompt's other responses (Ahmadian et al. 2024)."""
    scores = torch.tensor([1.0, 2.0, 6.0, 0.5, 0.5, 0.5])
    out = group_scores(scores, 3, "rloo")
    # group 1: 1 - (2 + 6) / 2 = -3; 2 - (1 + 6) / 2 = -1.5; 6 - (1 + 2) / 2 = 4.5
    assert out.tolist() == pytest.approx([-3.0, -1.5, 4.5, 0.0, 0.0, 0.0])


def test_group_scores_group_norm_hand_values() -> None:
    """(r - group mean) / group std (unbiased), as GRPO; a group of equal scores gets 0."""
    scores = torch.tensor([1.0, 3.0, 4.0, 4.0])
    out = group_scores(scores, 2, "group_norm")
    s = math.sqrt(2.0)  # std of {1, 3} with n - 1: sqrt(((-1)^2 + 1^2) / 1)
    assert out.tolist() == pytest.approx([-1 / s, 1 / s, 0.0, 0.0], abs=1e-5)


def test_group_scores_reject_bad_groups() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        group_scores(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="groups of 3"):
        group_scores(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="unknown"):
        group_scores(torch.zeros(4), 2, "mean")


def test_returns_to_go_hand_values_with_padding() -> None:
    rewards = torch.tensor([[-0.1, -0.2, 1.0], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    out = returns_to_go(rewards, mask)
    assert out.tolist() == [pytest.approx([0.7, 0.8, 1.0]), pytest.approx([0.5, 0.0, 0.0])]
    discounted = returns_to_go(rewards[:1], mask[:1], gamma=0.5)
    # G_0 = -0.1 + 0.5 (-0.2) + 0.25 (1.0) = 0.05; G_1 = -0.2 + 0.5 = 0.3
    assert discounted[0].tolist() == pytest.approx([0.05, 0.3, 1.0])
