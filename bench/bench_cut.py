"""What a scheduling step and a batch of the model cost, for the constants that weigh them.

Two figures that scheduler.py's constants are set from, measured here instead of by hand:

* one scheduling step (``Scheduler._next_batch``: the window, the least-cost cut around the
  head's text) on a full window (16 budgets' worth or 16 batches of rows, whichever comes
  first; a request larger than a batch ends it), for the CPU limits (1,024 tokens, 32 rows:
  1-item requests) and the GPU limits (16,384 tokens, 128 rows: 8-item requests);
* the embedded default encoder alone (ONNX Runtime, this machine's CPU) on batches of 256
  and 1,024 padded tokens, and what a fixed cost per batch is as a share of the CPU budget
  (``BATCH_OVERHEAD_SHARE`` weighs it; the server under load adds more).

    python bench/bench_cut.py [--reps 200] [--model-reps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from r3_service.encoder import load_encoder
from r3_service.engine.config import (
    CPU_BATCH_SIZE,
    CPU_BATCH_TOKENS,
    GPU_BATCH_SIZE,
    GPU_BATCH_TOKENS,
)
from r3_service.engine.scheduler import WINDOW_BATCHES, Job, Scheduler, Work
from r3_service.models import ensure_default_model


def full_window(tokens: int, rows: int, items: int, seed: int = 0) -> Scheduler:
    """A scheduler whose queue holds a full window of ``items``-item requests (3 texts an
    item: query, response, reference), with lengths like AlpacaFarm's (queries 10 to 60
    tokens, answers 20 to 250)."""
    rng = np.random.default_rng(seed)
    loop = asyncio.new_event_loop()
    scheduler = Scheduler(tokens, rows, max_queue_texts=1 << 20)
    scheduler.rate.observe(cost=float(tokens), texts=rows, seconds=0.1)
    texts = 0
    while texts < WINDOW_BATCHES * rows:
        lengths = [int(rng.integers(10, 60)) if i % 3 == 0 else int(rng.integers(20, 250))
                   for i in range(3 * items)]  # fmt: skip
        works = [
            Work(text=f"{texts}-{i}", future=loop.create_future(), ids=np.ones(n, np.int64))
            for i, n in enumerate(lengths)
        ]
        scheduler.add(works, Job(deadline=1e9), now=0.0)
        texts += len(works)
    loop.close()
    return scheduler


def step_ms(scheduler: Scheduler, reps: int) -> tuple[float, int]:
    """Median milliseconds of one scheduling step, and the texts in the window."""
    order = [job for job in scheduler._serving_order(0.0) if job.works]
    window = len(scheduler._window(order))
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        scheduler._next_batch(order)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times), window


def model_ms(reps: int) -> dict[int, float]:
    """Median milliseconds of the embedded default on 256 and 1,024 padded tokens."""
    with tempfile.TemporaryDirectory() as tmp:
        encoder = load_encoder(ensure_default_model(Path(tmp)))
        out = {}
        for rows in (8, 32):
            batch = [np.full(32, 1000, dtype=np.int64) for _ in range(rows)]
            encoder.embed_tokens(batch)  # warm-up
            times = []
            for _ in range(reps):
                started = time.perf_counter()
                encoder.embed_tokens(batch)
                times.append(time.perf_counter() - started)
            out[rows * 32] = 1000 * statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="scheduling steps timed")
    parser.add_argument("--model-reps", type=int, default=20, help="model batches timed")
    args = parser.parse_args()
    lines = []
    for name, tokens, rows, items in (
        ("CPU", CPU_BATCH_TOKENS, CPU_BATCH_SIZE, 1),
        ("GPU", GPU_BATCH_TOKENS, GPU_BATCH_SIZE, 8),
    ):
        ms, window = step_ms(full_window(tokens, rows, items), args.reps)
        lines.append(f"scheduling step, {name} limits ({window}-text window): {ms:.2f} ms")
    model = model_ms(args.model_reps)
    for padded, ms in model.items():
        lines.append(f"model alone, {padded} padded tokens: {ms:.1f} ms")
    # The fixed part of a batch: the intercept of the two, in tokens of the slope.
    slope = (model[1024] - model[256]) / (1024 - 256)
    fixed = model[256] - slope * 256
    lines.append(
        f"fixed cost of a batch: {fixed:.1f} ms = {fixed / slope:.0f} tokens "
        f"= 1/{CPU_BATCH_TOKENS * slope / fixed:.0f} of the CPU budget"
    )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
