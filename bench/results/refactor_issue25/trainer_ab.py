"""Metrics rows of a short tiny-LM PPO run (GAE and RLOO, with an evaluation) with the trainer
code in use (``R3_CODE=/tmp/old/trainer`` for the code before the split)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if os.environ.get("R3_CODE"):
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()]
    sys.path.insert(0, os.environ["R3_CODE"])
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from tiny_lm import PROMPTS, build_tiny_lm  # noqa: E402

import r3_trainer.trainer as trainer_module  # noqa: E402
from r3_trainer.config import PPOConfig  # noqa: E402


def word_reward(
    queries: Sequence[str],
    responses: Sequence[str],
    references: Sequence[str | None],
    qtypes: Sequence[str | None],
) -> list[float]:
    return [len(x.split()) / 10 for x in responses]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lm = build_tiny_lm(out / "lm")
    prompts = out / "p.jsonl"
    rows = [json.dumps({"input": p, "qtype": "OPENENDED"}) + "\n" for p in PROMPTS]
    prompts.write_text("".join(rows))
    result: dict[str, list[dict[str, Any]]] = {}
    for estimator, k in (("gae", 1), ("rloo", 2)):
        cfg = PPOConfig(
            model=str(lm),
            dataset=str(prompts),
            output_dir=str(out / estimator),
            batch_size=4,
            mini_batch_size=2,
            gradient_accumulation_steps=1,
            ppo_epochs=2,
            max_new_tokens=8,
            learning_rate=1e-3,
            lora_dropout=0.1,
            steps=3,
            eval_every=2,
            eval_size=2,
            save_every=0,
            tensorboard=False,
            plot=False,
            progress_bar=False,
            seed=7,
            advantage_estimator=estimator,
            samples_per_prompt=k,
        )
        trainer = trainer_module.PPOTrainer(cfg, word_reward)
        try:
            steps = trainer.train()
        finally:
            trainer.close()
        result[estimator] = [
            {
                key: None if isinstance(v, float) and math.isnan(v) else v
                for key, v in row.items()
                if not key.startswith("time_") and key not in ("rollouts_per_s", "load_avg_1m")
            }
            for row in steps
        ]
    data = {"code": trainer_module.__file__, "rows": result}
    (out / "rows.json").write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
