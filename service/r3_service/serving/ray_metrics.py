"""Copy a replica's ``r3_*`` Prometheus samples into Ray's metrics system.

Serve routes ``/metrics`` to one replica at a time, so a scrape of the Serve address sees
a single replica. Ray's metrics agent on each node exports every process's Ray metrics
(the ``ray_`` prefixed series that Ray's Prometheus discovery scrapes); this mirror sets one
Ray gauge per ``r3_*`` sample, tagged with the replica, so counters, histogram buckets and
gauges of all replicas reach that endpoint and aggregate with ``sum by``/``rate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from r3_service.api.routes.health import refresh_metrics
from r3_service.api.state import ServiceState

logger = logging.getLogger(__name__)


class RayMetricsMirror:
    """Every ``interval_s`` seconds, set a Ray gauge per ``r3_*`` sample (tag ``replica``)."""

    def __init__(self, state: ServiceState, replica: str, interval_s: float) -> None:
        self.state = state
        self.replica = replica
        self.interval_s = interval_s
        self._gauges: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                self.push()
            except Exception:  # metrics must never take a replica down
                logger.exception("copying metrics to Ray failed")
            await asyncio.sleep(self.interval_s)

    def push(self) -> int:
        """Copy every sample now; returns how many were set."""
        from ray.util.metrics import Gauge

        refresh_metrics(self.state)
        count = 0
        for family in self.state.metrics.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                gauge = self._gauges.get(sample.name)
                if gauge is None:
                    keys = (*sorted(sample.labels), "replica")
                    gauge = Gauge(sample.name, description=family.documentation, tag_keys=keys)
                    self._gauges[sample.name] = gauge
                with contextlib.suppress(ValueError):
                    gauge.set(sample.value, tags={**sample.labels, "replica": self.replica})
                    count += 1
        return count
