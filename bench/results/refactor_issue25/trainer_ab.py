"""Metrics rows of a short tiny-LM PPO run (GAE and RLOO, with an evaluation) with the trainer
code in use (``R3_CODE=/tmp/old/trainer`` for the code before the split)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

if os.environ.get("R3_CODE"):
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()]
    sys.path.insert(0, os.environ["R3_CODE"])
TESTS = Path(__file__).resolve().parents[3] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "trainer")]

from test_trainer_e2e import tiny_config, word_reward  # noqa: E402
from tiny_lm import PROMPTS, build_tiny_lm  # noqa: E402

import r3_trainer.trainer as trainer_module  # noqa: E402


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lm = build_tiny_lm(out / "lm")
    prompts = out / "p.jsonl"
    rows = [json.dumps({"input": p, "qtype": "OPENENDED"}) + "\n" for p in PROMPTS]
    prompts.write_text("".join(rows))
    result: dict[str, list[dict[str, Any]]] = {}
    for estimator, k in (("gae", 1), ("rloo", 2)):
        cfg = tiny_config(
            lm,
            prompts,
            out / estimator,
            eval_every=2,
            eval_size=2,
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
