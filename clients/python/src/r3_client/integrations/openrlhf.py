"""OpenRLHF reward function: pass this file's path as the remote reward URL.

OpenRLHF (``--reward.remote_url`` from 0.10.2, ``--remote_rm_url`` before) loads a ``.py``
path with ``importlib`` and calls ``reward_func(queries, prompts, labels)`` once per sample,
from its thread pool. Here those concurrent calls are gathered into batched
``POST /openrlhf/reward`` requests, so the service applies the same label rule, prompt split
and ``scores`` as it does for OpenRLHF's HTTP client (docs/integrations.md). Unlike that
client, this one sends ``Authorization: Bearer $R3_API_KEY`` and retries 408/429/5xx
honouring ``Retry-After``.

Environment: ``R3_BASE_URL``, ``R3_API_KEY``, ``R3_TIMEOUT`` (seconds per attempt),
``R3_ON_ERROR`` (``raise``, the default, leaves the sample's reward None as OpenRLHF does
when a reward call fails; a number stands in that reward, and ``r3_failed`` is logged),
``R3_OPENRLHF_EXTRA_LOGS`` (``0`` leaves ``extra_logs`` out, for OpenRLHF 0.8.3-0.8.11),
``R3_BATCH_WINDOW_MS`` (default 20), ``R3_BATCH_MAX_ITEMS`` (default 256).

OpenRLHF loads this file by path, outside its package, so it only re-exports
:mod:`r3_client.integrations._openrlhf` (one batcher per process, whichever way it loads).
"""

from r3_client.integrations._openrlhf import PATH, reward_func, set_client

__all__ = ["PATH", "reward_func", "set_client"]
