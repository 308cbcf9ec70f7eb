"""TRL adapter: ``GRPOTrainer(reward_funcs=[AsyncR3Reward()])`` (or ``R3Reward()``).

- :class:`AsyncR3Reward` has ``async def __call__``, which TRL >= 1.15 awaits on its event
  loop, alongside other async rewards; :class:`R3Reward` is the blocking form.
- :func:`r3_reward_async` / :func:`r3_reward` are plain module-level functions (configured
  from the environment) for TRL releases that detect only ``async def`` functions.
- Both objects pickle (``AsyncGRPOTrainer`` spawns its rollout worker): the HTTP client is
  made on first use in each process and is never pickled.
- When TRL passes ``log_metric`` / ``log_extra``, the R^3 components are logged as
  ``<name>/relevance``, ``<name>/length_incentive``, ... and ``<name>/failed``.
- ``on_error``: ``"raise"`` (default) stops training on a service error that the client's
  retries did not cure; ``"none"`` gives None for the failed samples (TRL turns it into NaN);
  a number stands in that value. ``failures`` counts the samples that failed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from r3_client._client import AsyncClient, Client
from r3_client._endpoints import BaseURL
from r3_client._types import RewardOptions
from r3_client.integrations._common import (
    AsyncClientPerLoop,
    ClientPerProcess,
    OnError,
    Sample,
    Scored,
    ascore_samples,
    client_options,
    env_on_error,
    parse_on_error,
    score_samples,
    to_qtype,
    to_query,
    to_reference,
    to_response,
)

__all__ = ["AsyncR3Reward", "R3Reward", "r3_reward", "r3_reward_async"]

_COMPONENTS = ("relevance", "length_incentive", "repetition_penalty", "constrained")


class _R3RewardBase:
    """Configuration, input conversion and logging shared by the sync and async rewards."""

    __name__: str

    def __init__(
        self,
        *,
        base_url: BaseURL | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        options: RewardOptions | Mapping[str, Any] | None = None,
        reference_column: str = "reference",
        qtype_column: str = "qtype",
        name: str = "r3_reward",
        on_error: OnError | str | None = None,
        log_components: bool = True,
        **client_kwargs: Any,
    ) -> None:
        self.client_kwargs = {
            "base_url": base_url,
            "api_key": api_key,
            **client_options(timeout),
            **client_kwargs,
        }
        self.options = dict(options) if options is not None else None
        self.reference_column = reference_column
        self.qtype_column = qtype_column
        self.__name__ = name
        self.on_error = env_on_error() if on_error is None else parse_on_error(on_error)
        self.log_components = log_components
        self.failures = 0

    def _samples(
        self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> list[Sample]:
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"got {len(prompts)} prompts for {n} completions")
        refs = self._column(kwargs, self.reference_column, n, to_reference)
        qtypes = self._column(kwargs, self.qtype_column, n, to_qtype)
        return [
            Sample(to_query(p), to_response(c), ref, qtype)
            for p, c, ref, qtype in zip(prompts, completions, refs, qtypes)
        ]

    @staticmethod
    def _column(
        kwargs: Mapping[str, Any], name: str, n: int, convert: Callable[[Any], str | None]
    ) -> list[str | None]:
        values = kwargs.get(name)
        if values is None:
            return [None] * n
        values = list(values)
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
        return [convert(v) for v in values]

    def _finish(self, scored: Sequence[Scored], kwargs: Mapping[str, Any]) -> list[float | None]:
        """Count failures, log components through TRL's callbacks, return the rewards."""
        failed = sum(s.failed for s in scored)
        self.failures += failed
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        if self.log_components and callable(log_metric):
            ok = [s for s in scored if not s.failed]
            for comp in _COMPONENTS:
                if ok:
                    log_metric(
                        f"{self.__name__}/{comp}", sum(getattr(s, comp) for s in ok) / len(ok)
                    )
            log_metric(f"{self.__name__}/failed", float(failed))
        if self.log_components and callable(log_extra):
            for comp in _COMPONENTS:
                log_extra(f"{self.__name__}/{comp}", [getattr(s, comp) for s in scored])
        return [s.reward for s in scored]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r}, on_error={self.on_error!r})"


class R3Reward(_R3RewardBase):
    """Blocking reward function for TRL trainers (GRPO, RLOO, ...) that calls the service.

    Accepts standard (``str``) and conversational (list of ``{"role", "content"}``)
    prompts/completions; the dataset columns ``reference_column`` and ``qtype_column``
    (any case) are read from the keyword arguments TRL passes. ``client`` may be given;
    a pickled copy then makes its own client with the same URL, key and timeout.
    """

    def __init__(self, client: Client | None = None, **kwargs: Any) -> None:
        if client is not None:
            kwargs = {
                "base_url": client._endpoints.spec,  # all URLs of a pool, or the handle
                "api_key": client.api_key,
                "timeout": client.timeout,
                **kwargs,
            }
        super().__init__(**kwargs)
        self._clients = ClientPerProcess(functools.partial(Client, **self.client_kwargs))
        if client is not None:
            self._clients.set(client)

    @property
    def client(self) -> Client:
        """This process's client."""
        return self._clients.get()

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        """One reward per completion, in order."""
        samples = self._samples(prompts, completions, kwargs)
        scored = score_samples(self.client, samples, self.options, self.on_error, self.__name__)
        return self._finish(scored, kwargs)

    def close(self) -> None:
        """Close the client if this object made it."""
        self._clients.close()


class AsyncR3Reward(_R3RewardBase):
    """Async reward function (``async def __call__``): TRL >= 1.15 awaits it on its own event
    loop, concurrently with its other async rewards. Same arguments as :class:`R3Reward`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clients = AsyncClientPerLoop(functools.partial(AsyncClient, **self.client_kwargs))

    async def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        """One reward per completion, in order."""
        samples = self._samples(prompts, completions, kwargs)
        client = self._clients.get()
        scored = await ascore_samples(client, samples, self.options, self.on_error, self.__name__)
        return self._finish(scored, kwargs)

    async def aclose(self) -> None:
        """Close the client of the running event loop."""
        await self._clients.aclose()


@functools.lru_cache(maxsize=1)
def _default_sync() -> R3Reward:
    return R3Reward()


@functools.lru_cache(maxsize=1)
def _default_async() -> AsyncR3Reward:
    return AsyncR3Reward()


def r3_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[Any]:
    """Module-level blocking reward, configured from ``R3_BASE_URL``, ``R3_API_KEY``,
    ``R3_TIMEOUT`` and ``R3_ON_ERROR``; dataset columns ``reference`` and ``qtype``."""
    return _default_sync()(prompts, completions, **kwargs)


async def r3_reward_async(
    prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
) -> list[Any]:
    """The ``async def`` form of :func:`r3_reward`, for TRL releases that await only
    coroutine functions."""
    return await _default_async()(prompts, completions, **kwargs)
