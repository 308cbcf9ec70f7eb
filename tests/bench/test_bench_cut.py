"""bench/bench_cut.py builds the windows it says it times, and its step is a real batch."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import bench_cut  # noqa: E402

from r3_service.engine.config import (  # noqa: E402
    CPU_BATCH_SIZE,
    CPU_BATCH_TOKENS,
    GPU_BATCH_SIZE,
    GPU_BATCH_TOKENS,
)
from r3_service.engine.scheduler import WINDOW_BATCHES  # noqa: E402


def test_the_gpu_window_is_full_and_a_step_cuts_a_batch_within_the_budget() -> None:
    scheduler = bench_cut.full_window(GPU_BATCH_TOKENS, GPU_BATCH_SIZE, items=8)
    ms, window = bench_cut.step_ms(scheduler, reps=2)
    assert window == WINDOW_BATCHES * GPU_BATCH_SIZE
    assert ms > 0
    order = [job for job in scheduler._serving_order(0.0) if job.works]
    batch = scheduler._next_batch(order)
    assert 0 < len(batch) <= GPU_BATCH_SIZE
    assert len(batch) * max(w.tokens for w in batch) <= GPU_BATCH_TOKENS
    assert order[0].works[0] in batch or any(w.job is order[0] for w in batch)


def test_the_cpu_window_ends_at_its_budget_worth_of_1_item_requests() -> None:
    scheduler = bench_cut.full_window(CPU_BATCH_TOKENS, CPU_BATCH_SIZE, items=1)
    _, window = bench_cut.step_ms(scheduler, reps=1)
    assert 0 < window <= WINDOW_BATCHES * CPU_BATCH_SIZE
    order = [job for job in scheduler._serving_order(0.0) if job.works]
    texts = scheduler._window(order)
    assert sum(w.cost for w in texts) >= WINDOW_BATCHES * CPU_BATCH_TOKENS
