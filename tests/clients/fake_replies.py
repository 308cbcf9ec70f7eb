"""Replies in the service's shape, for the fake servers of the client tests."""

from __future__ import annotations

import httpx


def reward_response(rewards: list[float], qtypes: list[str | None] | None = None) -> httpx.Response:
    """A 200 /reward answer in the service's shape (untyped queries come back OPENENDED)."""
    n = len(rewards)
    return httpx.Response(
        200,
        json={
            "rewards": rewards,
            "qtype": [q or "OPENENDED" for q in (qtypes or [None] * n)],
            "components": {
                "relevance": [0.5] * n,
                "length_incentive": [0.0] * n,
                "repetition_penalty": [0.0] * n,
                "branch": ["OPENENDED"] * n,
            },
            "model": "fake-model",
        },
    )


def ok_reward() -> httpx.Response:
    """A one-item 200 /reward answer (reward 0.25)."""
    return reward_response([0.25])
