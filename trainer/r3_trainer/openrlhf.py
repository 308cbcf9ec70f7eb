"""Scale-out with OpenRLHF (Ray, vLLM) against the same R^3 service.

OpenRLHF's ``--remote_rm_url`` client POSTs prompt + response sequences, the rendered prompts
and the dataset's label column to the service's ``/openrlhf/reward`` route. This module turns an
``r3-train`` dataset into OpenRLHF prompt rows whose label carries the reference answer and the
query type (``{"reference": ..., "qtype": ...}`` as JSON text), and prints a launch command with
the paper's PPO settings mapped onto OpenRLHF flags.

Usage: ``python -m r3_trainer.openrlhf DATA.json[l] OUT.jsonl [--reward-url URL]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from r3_trainer.config import PPOConfig
from r3_trainer.data import Example, load_examples

__all__ = ["label", "launch_command", "main", "write_prompts"]


def label(example: Example) -> str:
    """The OpenRLHF label of a row: JSON text ``{"reference", "qtype"}`` (nulls dropped)."""
    data = {"reference": example.output, "qtype": example.qtype}
    return json.dumps({k: v for k, v in data.items() if v is not None})


def write_prompts(examples: Sequence[Example], path: str | Path) -> Path:
    """Write JSONL rows ``{"input", "label"}`` for ``--input_key input --label_key label``."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"input": e.input, "label": label(e)}) + "\n")
    return path


def launch_command(prompt_file: str, reward_url: str, cfg: PPOConfig | None = None) -> str:
    """An OpenRLHF PPO command with the paper's settings (check flags against your version)."""
    cfg = cfg or PPOConfig()
    url = reward_url.rstrip("/") + "/openrlhf/reward"
    flags = [
        ("--pretrain", "YOUR_SFT_MODEL"),
        ("--remote_rm_url", url),
        ("--prompt_data", prompt_file),
        ("--input_key", "input"),
        ("--label_key", "label"),
        ("--apply_chat_template", None),
        ("--advantage_estimator", "gae"),
        ("--train_batch_size", str(cfg.batch_size)),
        ("--rollout_batch_size", str(cfg.batch_size)),
        ("--micro_train_batch_size", str(cfg.mini_batch_size)),
        ("--micro_rollout_batch_size", str(cfg.mini_batch_size)),
        ("--max_epochs", str(cfg.ppo_epochs)),
        ("--actor_learning_rate", f"{cfg.learning_rate:g}"),
        ("--critic_learning_rate", f"{cfg.learning_rate:g}"),
        ("--init_kl_coef", f"{cfg.init_kl_coef:g}"),
        ("--kl_target", f"{cfg.target_kl:g}"),
        ("--kl_horizon", str(cfg.kl_horizon)),
        ("--gamma", f"{cfg.gamma:g}"),
        ("--lambd", f"{cfg.lam:g}"),
        ("--eps_clip", f"{cfg.cliprange:g}"),
        ("--value_clip", f"{cfg.cliprange_value:g}"),
        ("--normalize_reward", None),
        ("--top_p", f"{cfg.top_p:g}"),
        ("--generate_max_len", str(cfg.max_new_tokens)),
        ("--prompt_max_len", str(cfg.max_prompt_length)),
        ("--lora_rank", str(cfg.lora_r)),
        ("--lora_alpha", str(cfg.lora_alpha)),
        ("--lora_dropout", f"{cfg.lora_dropout:g}"),
        ("--target_modules", " ".join(cfg.lora_target_modules)),
        ("--bf16", None),
        ("--save_path", "outputs/openrlhf-r3"),
    ]
    parts = ["python -m openrlhf.cli.train_ppo_ray"]
    parts += [f"{flag} {value}" if value is not None else flag for flag, value in flags]
    return " \\\n  ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Convert a dataset for OpenRLHF and print the launch command."""
    parser = argparse.ArgumentParser(
        prog="python -m r3_trainer.openrlhf",
        description="Write OpenRLHF prompt rows (input, label) and print a PPO command.",
    )
    parser.add_argument("dataset", help='JSON or JSONL rows {"input", "output"?, "qtype"?}')
    parser.add_argument("out", help="JSONL file to write")
    parser.add_argument("--reward-url", default="http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    path = write_prompts(load_examples(args.dataset), args.out)
    sys.stdout.write(launch_command(str(path), args.reward_url) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
