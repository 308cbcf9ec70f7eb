"""``r3-train``: PPO on a causal LM with rewards from an R^3 service.

Example::

    r3-serve --port 8000 &
    r3-train --reward-url http://127.0.0.1:8000 --dataset prompts.jsonl --steps 100

Settings: ``r3-train --help``; a YAML/JSON file with ``--config``; flags override the file.
Data-parallel on several GPUs: ``accelerate launch --num_processes N -m r3_trainer.cli ...``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from r3_trainer.config import PPOConfig, config_from_args

__all__ = ["main"]

log = logging.getLogger("r3_trainer")

EXIT_BAD_SETUP = 2
EXIT_REWARD_UNAVAILABLE = 3


def _setup_logging(cfg: PPOConfig, is_main: bool) -> None:
    level = logging.INFO if is_main else logging.WARNING
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if is_main:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(Path(cfg.output_dir) / "train.log", encoding="utf-8")
        file.setFormatter(fmt)
        root.addHandler(file)
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``r3-train``; returns the exit status."""
    cfg, args = config_from_args(argv)
    if args.print_config:
        import yaml

        sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    is_main = os.environ.get("RANK", "0") == "0"
    _setup_logging(cfg, is_main)

    from r3_trainer.rewards import RewardUnavailableError
    from r3_trainer.trainer import PPOTrainer

    try:
        trainer = PPOTrainer(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        log.error("%s", e)
        return EXIT_BAD_SETUP
    try:
        trainer.train()
    except RewardUnavailableError as e:
        log.error("%s; resume with --resume once the service is back", e)
        return EXIT_REWARD_UNAVAILABLE
    except KeyboardInterrupt:
        log.error("interrupted; resume with --resume")
        return 130
    finally:
        trainer.close()
    log.info("done: %s", Path(cfg.output_dir).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
