"""TRL adapter: ``GRPOTrainer(reward_funcs=[R3Reward()])``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from r3_client._client import Client
from r3_client._types import RewardOptions
from r3_client.integrations._common import to_qtype, to_query, to_reference, to_response

__all__ = ["R3Reward"]


class R3Reward:
    """Reward function for TRL trainers that calls the R^3 service.

    Accepts standard (``str``) and conversational (list of ``{"role", "content"}``)
    prompts/completions. The dataset columns named ``reference_column`` and
    ``qtype_column`` are read from the keyword arguments TRL passes.
    """

    __name__: str

    def __init__(
        self,
        client: Client | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        max_retries: int = 3,
        options: RewardOptions | Mapping[str, Any] | None = None,
        reference_column: str = "reference",
        qtype_column: str = "qtype",
        name: str = "r3_reward",
    ) -> None:
        self._owns_client = client is None
        self.client = client or Client(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries
        )
        self.options = dict(options) if options is not None else None
        self.reference_column = reference_column
        self.qtype_column = qtype_column
        self.__name__ = name

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        """Return one reward per completion, in order."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"got {len(prompts)} prompts for {n} completions")
        reference = self._column(kwargs, self.reference_column, n, to_reference)
        qtype = self._column(kwargs, self.qtype_column, n, to_qtype)
        result = self.client.reward(
            query=[to_query(p) for p in prompts],
            response=[to_response(c) for c in completions],
            reference=reference,
            qtype=qtype,
            options=self.options,
        )
        return result.rewards

    @staticmethod
    def _column(
        kwargs: Mapping[str, Any], name: str, n: int, convert: Any
    ) -> list[str | None] | None:
        values = kwargs.get(name)
        if values is None:
            return None
        values = list(values)
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
        out: list[str | None] = [convert(v) for v in values]
        return out if any(v is not None for v in out) else None

    def close(self) -> None:
        """Close the client if this object created it."""
        if self._owns_client:
            self.client.close()

    def __repr__(self) -> str:
        return f"R3Reward(name={self.__name__!r}, base_url={self.client.base_url!r})"
