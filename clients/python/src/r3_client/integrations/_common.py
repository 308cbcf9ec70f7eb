"""What every adapter shares: input conversion, fail-soft policy, per-process clients."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from r3_client._client import AsyncClient, Client
from r3_client._exceptions import (
    BadRequestError,
    InvalidInputError,
    R3Error,
    UnprocessableEntityError,
)
from r3_client._types import RewardResult

logger = logging.getLogger("r3_client.integrations")


def content_text(content: Any) -> str:
    """Text of a message ``content``: a str or a list of ``{"type": "text", ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "".join(texts)
    return str(content)


def to_plain(value: Any) -> Any:
    """Arrays (numpy, as in veRL's non-tensor batches) as plain lists; other values as is."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) and not isinstance(value, str) else value


def to_query(prompt: Any) -> str | list[dict[str, str]]:
    """A prompt as a service query: text, or ``[{"role", "content"}]`` messages."""
    prompt = to_plain(prompt)
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping):
        prompt = [prompt]
    if isinstance(prompt, (list, tuple)):
        return [
            {"role": str(m.get("role", "user")), "content": content_text(m.get("content"))}
            for m in prompt
            if isinstance(m, Mapping)
        ]
    raise TypeError(f"unsupported prompt type {type(prompt).__name__}")


def to_response(completion: Any) -> str:
    """A completion as text; for messages, the assistant contents joined by newlines."""
    completion = to_plain(completion)
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, Mapping)]
        assistant = [m for m in msgs if m.get("role") == "assistant"] or msgs
        return "\n".join(content_text(m.get("content")) for m in assistant)
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def to_reference(value: Any) -> str | None:
    """A reference answer as text, or ``None`` when missing/empty (a list: its first item)."""
    value = to_plain(value)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
        return to_reference(value)
    text = value if isinstance(value, str) else str(value)
    return text or None


QTYPES = ("OPENENDED", "CONSTRAINED")


def to_qtype(value: Any) -> str | None:
    """A query type in any case as ``OPENENDED``/``CONSTRAINED``; ``None`` or blank lets the
    server classify. Anything else is a ``ValueError``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = value.strip().upper() if isinstance(value, str) else None
    if text not in QTYPES:
        raise ValueError(f"qtype must be OPENENDED or CONSTRAINED (any case), got {value!r}")
    return text


# -- behaviour shared by every adapter ------------------------------------------------------

#: What an adapter does when the service cannot score a sample (after the client's retries):
#: ``"raise"`` the error, give ``"none"`` (a missing reward), or give a fixed value.
OnError = Literal["raise", "none"] | float

ON_ERROR_ENV = "R3_ON_ERROR"
TIMEOUT_ENV = "R3_TIMEOUT"
BATCH_WINDOW_ENV = "R3_BATCH_WINDOW_MS"
BATCH_MAX_ENV = "R3_BATCH_MAX_ITEMS"


def parse_on_error(value: Any) -> OnError:
    """``"raise"``, ``"none"`` or a number (also as text, e.g. from ``R3_ON_ERROR``)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("raise", "none"):
            return cast(OnError, text)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"on_error must be 'raise', 'none' or a number, got {value!r}"
            ) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"on_error must be 'raise', 'none' or a finite number, got {value!r}")


def env_on_error(default: OnError = "raise") -> OnError:
    """The fail-soft policy from ``R3_ON_ERROR`` (``raise`` when unset)."""
    value = os.environ.get(ON_ERROR_ENV)
    return parse_on_error(value) if value else default


def env_float(name: str, default: float) -> float:
    """A float from the environment, ``default`` when unset."""
    value = os.environ.get(name)
    return float(value) if value else default


def client_options(timeout: float | None = None) -> dict[str, Any]:
    """Client keyword arguments from the environment: ``R3_TIMEOUT`` (seconds per attempt).

    ``R3_BASE_URL`` and ``R3_API_KEY`` are read by the client itself.
    """
    return {"timeout": timeout if timeout is not None else env_float(TIMEOUT_ENV, 60.0)}


@dataclass(frozen=True)
class Sample:
    """One sample to score, already in service form."""

    query: str | list[dict[str, str]]
    response: str
    reference: str | None = None
    qtype: str | None = None


@dataclass(frozen=True)
class Scored:
    """One sample's reward and components; ``failed`` when the fail-soft value stands in."""

    reward: float | None
    relevance: float
    length_incentive: float
    repetition_penalty: float
    constrained: float
    failed: bool = False

    def components(self) -> dict[str, float]:
        """The R^3 components under their logged names (``r3_*``)."""
        return {
            "r3_relevance": self.relevance,
            "r3_length_incentive": self.length_incentive,
            "r3_repetition_penalty": self.repetition_penalty,
            "r3_constrained": self.constrained,
            "r3_failed": 1.0 if self.failed else 0.0,
        }


def scored_from(result: RewardResult) -> list[Scored]:
    """Split a batched result into per-sample records."""
    c = result.components
    return [
        Scored(
            reward=reward,
            relevance=rel,
            length_incentive=li,
            repetition_penalty=rp,
            constrained=1.0 if branch == "CONSTRAINED" else 0.0,
        )
        for reward, rel, li, rp, branch in zip(
            result.rewards, c.relevance, c.length_incentive, c.repetition_penalty, c.branch
        )
    ]


def reward_kwargs(samples: Sequence[Sample]) -> dict[str, Any]:
    """``Client.reward`` arguments for ``samples`` (all-null columns left out)."""
    refs = [s.reference for s in samples]
    qtypes = [s.qtype for s in samples]
    return {
        "query": [s.query for s in samples],
        "response": [s.response for s in samples],
        "reference": refs if any(r is not None for r in refs) else None,
        "qtype": qtypes if any(q is not None for q in qtypes) else None,
    }


def fail_soft(on_error: OnError, exc: R3Error, n: int, where: str) -> list[Scored]:
    """Re-raise ``exc``, or stand in the fail-soft value for ``n`` samples (logged); their
    components are 0 and ``failed`` is set."""
    if on_error == "raise":
        raise exc
    value = None if on_error == "none" else float(on_error)
    logger.warning("%s: %d sample(s) not scored, reward %r stands in: %s", where, n, value, exc)
    return [Scored(value, 0.0, 0.0, 0.0, 0.0, failed=True) for _ in range(n)]


#: Errors that concern one request's content: the samples are retried one by one so
#: that only the offending sample fails.
_ITEM_ERRORS = (BadRequestError, UnprocessableEntityError)


def score_samples(
    client: Client, samples: Sequence[Sample], options: Any, on_error: OnError, where: str
) -> list[Scored]:
    """Score ``samples`` in one call; a refused batch is retried sample by sample."""
    try:
        return scored_from(client.reward(**reward_kwargs(samples), options=options))
    except _ITEM_ERRORS as exc:
        if len(samples) == 1:
            return fail_soft(on_error, exc, 1, where)
        return [
            s for one in samples for s in score_samples(client, [one], options, on_error, where)
        ]
    except InvalidInputError:  # a local mistake, not a service failure
        raise
    except R3Error as exc:
        return fail_soft(on_error, exc, len(samples), where)


async def ascore_samples(
    client: AsyncClient, samples: Sequence[Sample], options: Any, on_error: OnError, where: str
) -> list[Scored]:
    """:func:`score_samples` for the async client (singles are sent concurrently)."""
    try:
        return scored_from(await client.reward(**reward_kwargs(samples), options=options))
    except _ITEM_ERRORS as exc:
        if len(samples) == 1:
            return fail_soft(on_error, exc, 1, where)
        parts = await asyncio.gather(
            *(ascore_samples(client, [one], options, on_error, where) for one in samples)
        )
        return [s for part in parts for s in part]
    except InvalidInputError:  # a local mistake, not a service failure
        raise
    except R3Error as exc:
        return fail_soft(on_error, exc, len(samples), where)


class ClientPerProcess:
    """A :class:`Client` made on first use in each process (rebuilt after a fork).

    Holds no client when pickled, so the adapters that own one pickle too. A client given
    with :meth:`set` is used in this process and never closed here.
    """

    def __init__(self, factory: Callable[[], Client]) -> None:
        self.factory = factory
        self._client: Client | None = None
        self._pid: int | None = None
        self._external = False
        self._lock = threading.Lock()

    def get(self) -> Client:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client, self._pid, self._external = self.factory(), os.getpid(), False
            return self._client

    def set(self, client: Client | None) -> None:
        """Use ``client`` in this process (``None``: make one from the factory on next use)."""
        with self._lock:
            self._client, self._external = client, client is not None
            self._pid = os.getpid() if client is not None else None

    def close(self) -> None:
        """Close the client made here (a client given with :meth:`set` is left open)."""
        with self._lock:
            if self._client is not None and self._pid == os.getpid() and not self._external:
                self._client.close()
            self._client, self._pid, self._external = None, None, False

    def __getstate__(self) -> dict[str, Any]:
        return {"factory": self.factory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["factory"])  # type: ignore[misc]


class AsyncClientPerLoop:
    """An :class:`AsyncClient` per event loop and process (an httpx pool is bound to its loop)."""

    def __init__(self, factory: Callable[[], AsyncClient]) -> None:
        self.factory = factory
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._pid = os.getpid()

    def get(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        if self._pid != os.getpid():
            self._clients = weakref.WeakKeyDictionary()
            self._pid = os.getpid()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self.factory()
        return client

    async def aclose(self) -> None:
        """Close the client of the running loop."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"factory": self.factory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["factory"])  # type: ignore[misc]
