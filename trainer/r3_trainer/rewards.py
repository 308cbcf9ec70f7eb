"""Rewards: a plain callable underneath, the R^3 service over HTTP on top, and patient retries.

A reward function takes aligned lists ``(queries, responses, references, qtypes)`` and returns
one float per response, or :class:`Scores` that also say where the reward cut each response.
:class:`HTTPReward` calls ``POST /reward`` through ``r3_client`` and returns the service's
cuts; :class:`PatientReward` wraps any reward function so that an outage pauses training
(with logged, backed-off retries) instead of losing the step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from r3_client import (
    APIConnectionError,
    Client,
    InternalServerError,
    RateLimitError,
    RequestTooLargeError,
)

__all__ = [
    "HTTPReward",
    "PatientReward",
    "RewardFn",
    "RewardUnavailableError",
    "Scores",
    "is_transient",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    """One reward per response and, when the reward function says so, how it read them.

    ``stop_end[i]``: the characters of response i that the reward accounted for, the stop
    string that ended it included; the trainer keeps the tokens that spell them. None: the
    whole response. ``scored[i]``: the text the reward saw. ``copies_query[i]``: whether the
    response mostly repeats its query.
    """

    rewards: list[float]
    stop_end: list[int] | None = None
    scored: list[str] | None = None
    copies_query: list[bool] | None = None

    def check(self, responses: Sequence[str]) -> None:
        """Raise ValueError unless every column has one finite value per response."""
        n = len(responses)
        for name in ("rewards", "stop_end", "scored", "copies_query"):
            column = getattr(self, name)
            if column is not None and len(column) != n:
                raise ValueError(f"got {len(column)} {name} for {n} responses")
        if not all(math.isfinite(r) for r in self.rewards):
            raise ValueError("reward function returned a non-finite reward")
        if self.stop_end is not None and not all(
            0 <= e <= len(r) for e, r in zip(self.stop_end, responses)
        ):
            raise ValueError("reward function returned a cut outside its response")


class RewardFn(Protocol):
    """``fn(queries, responses, references, qtypes) -> one reward per response`` or Scores."""

    def __call__(
        self,
        queries: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None],
        qtypes: Sequence[str | None],
    ) -> Sequence[float] | Scores: ...


class RewardUnavailableError(RuntimeError):
    """The reward service stayed unreachable for longer than the configured patience."""


def is_transient(exc: BaseException) -> bool:
    """Whether a failed reward call is worth retrying: connection errors, timeouts, 429, 5xx."""
    if isinstance(exc, RequestTooLargeError):
        return False
    return isinstance(
        exc,
        (APIConnectionError, InternalServerError, RateLimitError, ConnectionError, TimeoutError),
    )


class HTTPReward:
    """Rewards from an R^3 service (``POST /reward``) through :class:`r3_client.Client`.

    ``options`` go with every request (see ``PPOConfig.service_options``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        options: Mapping[str, Any] | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        client: Client | None = None,
    ) -> None:
        self._owns_client = client is None
        self.client = client or Client(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries
        )
        self.options = dict(options) if options else None

    def __call__(
        self,
        queries: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None],
        qtypes: Sequence[str | None],
    ) -> Scores:
        result = self.client.reward(
            query=list(queries),
            response=list(responses),
            reference=list(references) if any(r is not None for r in references) else None,
            qtype=list(qtypes) if any(q is not None for q in qtypes) else None,
            options=self.options,
        )
        cut = result.cut
        return Scores(
            rewards=result.rewards,
            stop_end=cut.stop_end if cut is not None else None,
            scored=cut.scored(responses) if cut is not None else None,
            copies_query=result.copies_query,
        )

    def stop_strings(self) -> list[str] | None:
        """The strings the service cuts at: the request's, or the service's defaults."""
        if self.options and self.options.get("stop_strings") is not None:
            return list(self.options["stop_strings"])
        return self.client.info().stop_strings

    def close(self) -> None:
        """Close the HTTP client, if this object made it."""
        if self._owns_client:
            self.client.close()


class PatientReward:
    """Retry a reward function on transient errors until it answers (or patience runs out).

    Pauses double from ``backoff_initial`` up to ``backoff_max`` seconds; every failure is
    logged. ``patience`` None waits forever; otherwise :class:`RewardUnavailableError` is
    raised once that many seconds passed since the first failure. Answers are checked (one
    finite float per response) and returned as :class:`Scores`.
    """

    def __init__(
        self,
        fn: RewardFn,
        *,
        patience: float | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        retryable: Callable[[BaseException], bool] = is_transient,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fn = fn
        self.patience = patience
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.retryable = retryable
        self.sleep = sleep
        self.clock = clock
        self.failures = 0
        self.waited_s = 0.0

    def __call__(
        self,
        queries: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None],
        qtypes: Sequence[str | None],
    ) -> Scores:
        first_failure: float | None = None
        delay = self.backoff_initial
        attempt = 0
        while True:
            try:
                answer = self.fn(queries, responses, references, qtypes)
            except Exception as exc:
                if not self.retryable(exc):
                    raise
                now = self.clock()
                first_failure = now if first_failure is None else first_failure
                attempt += 1
                self._wait(exc, attempt, delay, now - first_failure)
                delay = min(delay * 2, self.backoff_max)
                continue
            if attempt:
                log.info("reward service back after %d failed attempts", attempt)
            scores = answer if isinstance(answer, Scores) else Scores([float(r) for r in answer])
            scores.check(responses)
            return scores

    def _wait(self, exc: Exception, attempt: int, delay: float, failing_for: float) -> None:
        """Log a failed attempt and sleep ``delay``, or give up once patience is spent."""
        self.failures += 1
        if self.patience is not None and failing_for >= self.patience:
            raise RewardUnavailableError(
                f"reward service unavailable for {failing_for:.0f} s ({attempt} attempts): {exc}"
            ) from exc
        log.warning(
            "reward call failed (attempt %d): %s; training paused, retrying in %.1f s",
            attempt,
            exc,
            delay,
        )
        self.sleep(delay)
        self.waited_s += delay
