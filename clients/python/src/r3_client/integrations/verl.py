"""veRL adapter: ``custom_reward_function.path`` -> this file, ``name: compute_score``.

Imports are absolute because veRL loads this file by path, outside its package.

A module-level :class:`~r3_client.Client` is built lazily from ``R3_BASE_URL`` /
``R3_API_KEY`` (rebuilt after a fork). The query is read from ``extra_info``
(``"question"``, else ``"prompt"``), the reference is ``ground_truth`` and
``extra_info["qtype"]`` may force the question type.

veRL (>= 0.7) calls ``compute_score`` once per sample from a thread pool; those
concurrent calls are gathered into one ``/reward`` request: the first call
waits up to ``R3_VERL_BATCH_WINDOW_MS`` (default 20) for others to join, at
most ``R3_VERL_MAX_BATCH`` (default 256) items a request.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from r3_client._client import Client
from r3_client.integrations._common import to_qtype, to_query, to_reference

__all__ = ["compute_score", "compute_score_batch", "get_client", "set_client"]

_client: Client | None = None
_client_pid: int | None = None
_lock = threading.Lock()


def get_client() -> Client:
    """The module-level client, built from the environment on first use."""
    global _client, _client_pid
    with _lock:
        if _client is None or _client_pid != os.getpid():
            _client = Client()
            _client_pid = os.getpid()
        return _client


def set_client(client: Client | None) -> None:
    """Replace the module-level client (``None`` rebuilds it from env on next use)."""
    global _client, _client_pid
    with _lock:
        _client = client
        _client_pid = os.getpid() if client is not None else None


def _query(extra_info: Mapping[str, Any] | None) -> str | list[dict[str, str]]:
    info = extra_info or {}
    for key in ("question", "prompt", "query"):
        value = info.get(key)
        if value:
            return to_query(value)
    raise ValueError(
        "r3_client.integrations.verl needs the query in extra_info['question'] "
        "or extra_info['prompt']"
    )


_Item = tuple[Any, str, Any, "Mapping[str, Any] | None"]


class _MicroBatcher:
    """Gathers concurrent single-sample calls into batched requests."""

    def __init__(self, window_s: float, max_batch: int) -> None:
        self.window_s = window_s
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[tuple[_Item, Future[float]]] = []
        self._leader = False

    def score(self, item: _Item) -> float:
        _query(item[3])  # a sample without a query fails alone, before batching
        future: Future[float] = Future()
        with self._cond:
            self._pending.append((item, future))
            self._cond.notify_all()
            lead = not self._leader
            if lead:
                self._leader = True
        if lead:
            self._lead()
        return future.result()

    def _lead(self) -> None:
        """The first caller waits for the window to fill, then sends what is pending."""
        deadline = time.monotonic() + self.window_s
        with self._cond:
            while len(self._pending) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._leader = False
            if self._pending:  # the overflow gets a leader of its own
                self._leader = True
                threading.Thread(target=self._lead, daemon=True).start()
        try:
            rewards = compute_score_batch(
                data_sources=[i[0] for i, _ in taken],
                solution_strs=[i[1] for i, _ in taken],
                ground_truths=[i[2] for i, _ in taken],
                extra_infos=[i[3] for i, _ in taken],
            )
        except BaseException as exc:
            for _, future in taken:
                future.set_exception(exc)
        else:
            for (_, future), reward in zip(taken, rewards):
                future.set_result(reward)


_batcher = _MicroBatcher(
    window_s=float(os.environ.get("R3_VERL_BATCH_WINDOW_MS", "20")) / 1000.0,
    max_batch=int(os.environ.get("R3_VERL_MAX_BATCH", "256")),
)


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """R^3 reward of one decoded response (veRL ``NaiveRewardManager`` signature).

    Concurrent calls (veRL's thread pool) share one batched request.
    """
    return _batcher.score((data_source, solution_str, ground_truth, extra_info))


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **kwargs: Any,
) -> list[float]:
    """R^3 rewards for a batch (veRL ``BatchRewardManager`` signature)."""
    n = len(solution_strs)
    infos: list[Mapping[str, Any] | None] = (
        list(extra_infos) if extra_infos is not None else [None] * n
    )
    if len(ground_truths) != n or len(infos) != n:
        raise ValueError("solution_strs, ground_truths and extra_infos differ in length")
    qtypes = [to_qtype((i or {}).get("qtype")) for i in infos]
    refs = [to_reference(g) for g in ground_truths]
    result = get_client().reward(
        query=[_query(i) for i in infos],
        response=list(solution_strs),
        reference=refs if any(r is not None for r in refs) else None,
        qtype=qtypes if any(q is not None for q in qtypes) else None,
    )
    return result.rewards
