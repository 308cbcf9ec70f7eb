"""Seconds per PPO step by phase, before and after the trainer's speed work, side by side.

    python bench/bench_trainer_step.py --rounds 3 [--reward-url URL] [--json OUT.json]

One process loads the bundled policy (SmolLM2-135M-Instruct, LoRA) once and takes PPO steps
against a live service (started here unless ``--reward-url``), cycling through the variants
round by round so that a slow spell of the machine hits all of them alike:

- ``before``: the paper's PPO layout (mini-batch 2 x 4 accumulation, 4 PPO epochs) with the
  trainer's code before the speed work, where every sub-batch kept the whole batch's prompt
  padding (the previous ``Rollouts.select``, kept below to measure against; without it the
  no-grad forward's grouping of rows by length saves only response padding);
- ``after``: the same layout with the current code (prompt columns that are padding in every
  row of a sub-batch dropped; the no-grad forward groups rows of similar length);
- ``chosen``: the current code with the learning benchmark's settings (mini-batch 4 x 2,
  1 PPO epoch, 4 responses per prompt with RLOO baselines: no value loss).

Each step reports generation, reward call, no-grad forward (policy, values, reference) and
update seconds; the first step of each variant is a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from _server import service

from r3_service.data import ALPACAFARM_QTYPE
from r3_trainer.config import PPOConfig
from r3_trainer.rollout import Rollouts

PHASES = ("time_generate_s", "time_reward_s", "time_forward_s", "time_train_s", "time_step_s")


def _select_before(self: Rollouts, index: torch.Tensor | list[int]) -> Rollouts:
    """``Rollouts.select`` as it was before the speed work: the batch's prompt padding kept."""
    idx = torch.as_tensor(index, dtype=torch.long)
    mask = self.response_mask[idx]
    width = self.response_start + max(int(mask.sum(1).max()), 1)
    return Rollouts(
        self.input_ids[idx, :width],
        self.attention_mask[idx, :width],
        self.response_start,
        mask[:, : width - self.response_start],
        [self.texts[i] for i in idx.tolist()],
    )


@contextmanager
def _code(variant: str) -> Iterator[None]:
    """The trainer's code of ``variant``: the previous ``select`` for ``before``."""
    if variant != "before":
        yield
        return
    current = Rollouts.select
    Rollouts.select = _select_before  # type: ignore[method-assign,unused-ignore]
    try:
        yield
    finally:
        Rollouts.select = current  # type: ignore[method-assign,unused-ignore]


_PAPER = {
    "mini_batch_size": 2,
    "gradient_accumulation_steps": 4,
    "ppo_epochs": 4,
    "samples_per_prompt": 1,
    "advantage_estimator": "gae",
}
LAYOUTS: dict[str, dict[str, Any]] = {
    "before": _PAPER,
    "after": _PAPER,
    "chosen": {
        "mini_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "ppo_epochs": 1,
        "samples_per_prompt": 4,
        "advantage_estimator": "rloo",
    },
}


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def measure(url: str, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """The counted steps of every variant, taken round by round against ``url``."""
    from r3_trainer.trainer import PPOTrainer

    out_dir = Path("/tmp") / f"bench-trainer-step-{int(time.time())}"
    cfg = PPOConfig(
        dataset=str(ALPACAFARM_QTYPE),
        reward_url=url,
        steps=10_000,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        learning_rate=1e-4,
        eval_every=0,
        save_every=0,
        tensorboard=False,
        progress_bar=False,
        output_dir=str(out_dir),
    )
    trainer = PPOTrainer(cfg)
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in LAYOUTS}
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms every variant up
            for variant, layout in LAYOUTS.items():
                for key, value in layout.items():
                    setattr(trainer.cfg, key, value)
                with _code(variant):
                    row = trainer.train_step()
                tokens = float(row["response_length_mean"])
                _say(
                    f"round {round_} {variant:7s} "
                    + " ".join(f"{k[5:-2]} {row[k]:6.1f}" for k in PHASES)
                    + f"  tokens {tokens:.0f}"
                )
                if round_ > 0:
                    rows[variant].append({k: row[k] for k in (*PHASES, "response_length_mean")})
    finally:
        trainer.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="Counted steps per variant.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--reward-url", default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with service(args.reward_url) as url:
        rows = measure(url, args)
    summary = {
        v: {k: statistics.mean(r[k] for r in rs) for k in (*PHASES, "response_length_mean")}
        for v, rs in rows.items()
    }
    _say(f"\nmean of {args.rounds} rounds (s): " + ", ".join(k[5:-2] for k in PHASES))
    for v, s in summary.items():
        _say(f"{v:7s} " + " ".join(f"{s[k]:7.2f}" for k in PHASES))
    before, after, chosen = (summary[v]["time_step_s"] for v in ("before", "after", "chosen"))
    _say(
        f"before/after {before / after:.2f}x (same PPO layout), "
        f"before/chosen {before / chosen:.2f}x (the benchmark's settings)"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"rounds": args.rounds, "summary": summary, "rows": rows}, indent=2),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
