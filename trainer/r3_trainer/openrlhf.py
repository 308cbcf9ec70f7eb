"""Scale-out with OpenRLHF (Ray, vLLM) against the same R^3 service.

OpenRLHF sends each sample's prompt + response, the rendered prompt and the dataset's label
column to the service's ``/openrlhf/reward`` route (or, with ``--reward-func``, through the
``r3_client`` reward-function file, which sends the API key and honours ``Retry-After``).
This module turns an ``r3-train`` dataset into OpenRLHF prompt rows whose label carries the
reference answer and the query type (``{"reference": ..., "qtype": ...}`` as JSON text), and
prints a launch command with the paper's PPO settings in the flags of the installed
OpenRLHF release (:data:`FLAG_STYLES`; ``--openrlhf-version`` picks another).

Usage: ``python -m r3_trainer.openrlhf DATA.json[l] OUT.jsonl [--reward-url URL]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from r3_trainer.config import PPOConfig
from r3_trainer.data import Example, load_examples

__all__ = [
    "FLAG_STYLES",
    "LATEST_TESTED",
    "flag_style",
    "installed_version",
    "label",
    "launch_command",
    "main",
    "write_prompts",
]

#: The newest OpenRLHF release the generated command was checked against (its own parser).
LATEST_TESTED = "0.11.2"

#: OpenRLHF's ``train_ppo_ray`` flag spellings, newest first: (first release, style).
#: ``dotted`` (0.10.2+): ``--reward.remote_url``, ``--data.label_key``, ``--ds.param_dtype``...;
#: ``max_len`` (0.9.8-0.10.1): underscores, ``--max_new_tokens`` + ``--max_len``;
#: ``param_dtype`` (0.9.2-0.9.7): ``--param_dtype bf16`` with ``--generate_max_len``;
#: ``bf16`` (up to 0.9.1): ``--bf16``.
FLAG_STYLES: tuple[tuple[tuple[int, int, int], str], ...] = (
    ((0, 10, 2), "dotted"),
    ((0, 9, 8), "max_len"),
    ((0, 9, 2), "param_dtype"),
    ((0, 0, 0), "bf16"),
)

# Setting -> flag in the dotted style; the underscore styles use _LEGACY.
_DOTTED = {
    "model": "--actor.model_name_or_path",
    "reward": "--reward.remote_url",
    "data": "--data.prompt_dataset",
    "input_key": "--data.input_key",
    "label_key": "--data.label_key",
    "chat_template": "--data.apply_chat_template",
    "estimator": "--algo.advantage.estimator",
    "train_batch": "--train.batch_size",
    "rollout_batch": "--rollout.batch_size",
    "micro_train": "--train.micro_batch_size",
    "micro_rollout": "--rollout.micro_batch_size",
    "epochs": "--train.max_epochs",
    "actor_lr": "--actor.adam.lr",
    "critic_lr": "--critic.adam.lr",
    "init_kl": "--algo.kl.init_coef",
    "kl_target": "--algo.kl.target",
    "kl_horizon": "--algo.kl.horizon",
    "gamma": "--algo.advantage.gamma",
    "lambd": "--algo.advantage.lambd",
    "eps_clip": "--actor.eps_clip",
    "value_clip": "--critic.value_clip",
    "normalize": "--reward.normalize_enable",
    "top_p": "--rollout.top_p",
    "new_tokens": "--rollout.max_new_tokens",
    "max_len": "--data.max_len",
    "lora_rank": "--ds.lora.rank",
    "lora_alpha": "--ds.lora.alpha",
    "lora_dropout": "--ds.lora.dropout",
    "lora_modules": "--ds.lora.target_modules",
    "dtype": "--ds.param_dtype",
    "save": "--ckpt.output_dir",
}
_LEGACY = {
    "model": "--pretrain",
    "reward": "--remote_rm_url",
    "data": "--prompt_data",
    "input_key": "--input_key",
    "label_key": "--label_key",
    "chat_template": "--apply_chat_template",
    "estimator": "--advantage_estimator",
    "train_batch": "--train_batch_size",
    "rollout_batch": "--rollout_batch_size",
    "micro_train": "--micro_train_batch_size",
    "micro_rollout": "--micro_rollout_batch_size",
    "epochs": "--max_epochs",
    "actor_lr": "--actor_learning_rate",
    "critic_lr": "--critic_learning_rate",
    "init_kl": "--init_kl_coef",
    "kl_target": "--kl_target",
    "kl_horizon": "--kl_horizon",
    "gamma": "--gamma",
    "lambd": "--lambd",
    "eps_clip": "--eps_clip",
    "value_clip": "--value_clip",
    "normalize": "--normalize_reward",
    "top_p": "--top_p",
    "new_tokens": "--max_new_tokens",
    "max_len": "--max_len",
    "lora_rank": "--lora_rank",
    "lora_alpha": "--lora_alpha",
    "lora_dropout": "--lora_dropout",
    "lora_modules": "--target_modules",
    "dtype": "--param_dtype",
    "save": "--save_path",
}


def label(example: Example) -> str:
    """The OpenRLHF label of a row: JSON text ``{"reference", "qtype"}`` (nulls dropped)."""
    data = {"reference": example.output, "qtype": example.qtype}
    return json.dumps({k: v for k, v in data.items() if v is not None})


def write_prompts(examples: Sequence[Example], path: str | Path) -> Path:
    """Write JSONL rows ``{"input", "label"}`` (input key ``input``, label key ``label``)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"input": e.input, "label": label(e)}) + "\n")
    return path


def installed_version() -> str | None:
    """The installed OpenRLHF release, or None."""
    try:
        return importlib.metadata.version("openrlhf")
    except importlib.metadata.PackageNotFoundError:
        return None


def flag_style(version: str | None) -> str:
    """The flag style of an OpenRLHF release (:data:`FLAG_STYLES`; None: the latest)."""
    if version is None:
        return FLAG_STYLES[0][1]
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]]
    key = tuple(parts + [0] * (3 - len(parts)))
    return next(style for first, style in FLAG_STYLES if key >= first)


def _settings(prompt_file: str, reward: str, cfg: PPOConfig) -> list[tuple[str, str | None]]:
    """The paper's PPO settings, by setting name (the flag comes from the style)."""
    return [
        ("model", "YOUR_SFT_MODEL"),
        ("reward", reward),
        ("data", prompt_file),
        ("input_key", "input"),
        ("label_key", "label"),
        ("chat_template", None),
        ("estimator", "gae"),
        ("train_batch", str(cfg.batch_size)),
        ("rollout_batch", str(cfg.batch_size)),
        ("micro_train", str(cfg.mini_batch_size)),
        ("micro_rollout", str(cfg.mini_batch_size)),
        ("epochs", str(cfg.ppo_epochs)),
        ("actor_lr", f"{cfg.learning_rate:g}"),
        ("critic_lr", f"{cfg.learning_rate:g}"),
        ("init_kl", f"{cfg.init_kl_coef:g}"),
        ("kl_target", f"{cfg.target_kl:g}"),
        ("kl_horizon", str(cfg.kl_horizon)),
        ("gamma", f"{cfg.gamma:g}"),
        ("lambd", f"{cfg.lam:g}"),
        ("eps_clip", f"{cfg.cliprange:g}"),
        ("value_clip", f"{cfg.cliprange_value:g}"),
        ("normalize", None),
        ("top_p", f"{cfg.top_p:g}"),
        ("new_tokens", str(cfg.max_new_tokens)),
        ("max_len", str(cfg.max_prompt_length + cfg.max_new_tokens)),
        ("lora_rank", str(cfg.lora_r)),
        ("lora_alpha", str(cfg.lora_alpha)),
        ("lora_dropout", f"{cfg.lora_dropout:g}"),
        ("lora_modules", " ".join(cfg.lora_target_modules)),
        ("dtype", "bf16"),
        ("save", "outputs/openrlhf-r3"),
    ]


def _flags(style: str, settings: list[tuple[str, str | None]], cfg: PPOConfig) -> list[str]:
    names = _DOTTED if style == "dotted" else _LEGACY
    flags = []
    for name, value in settings:
        if style in ("param_dtype", "bf16") and name == "new_tokens":
            flags.append(f"--generate_max_len {value}")
        elif style in ("param_dtype", "bf16") and name == "max_len":
            flags.append(f"--prompt_max_len {cfg.max_prompt_length}")
        elif style == "bf16" and name == "dtype":
            flags.append("--bf16")
        else:
            flags.append(names[name] if value is None else f"{names[name]} {value}")
    return flags


def launch_command(
    prompt_file: str,
    reward_url: str,
    cfg: PPOConfig | None = None,
    *,
    version: str | None = None,
    reward_func: str | None = None,
) -> str:
    """An OpenRLHF PPO command with the paper's settings, in the flags of ``version``
    (default: the installed OpenRLHF, else :data:`LATEST_TESTED`). With ``reward_func``
    (the path of ``r3_client/integrations/openrlhf.py``) OpenRLHF calls that file instead of
    the HTTP route, and the command sets ``R3_BASE_URL``."""
    cfg = cfg or PPOConfig()
    version = version or installed_version() or LATEST_TESTED
    base = reward_url.rstrip("/")
    reward = reward_func or base + "/openrlhf/reward"
    env = f"R3_BASE_URL={base} " if reward_func else ""
    parts = [env + "python -m openrlhf.cli.train_ppo_ray"]
    parts += _flags(flag_style(version), _settings(prompt_file, reward, cfg), cfg)
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
    parser.add_argument(
        "--openrlhf-version",
        default=None,
        help=f"OpenRLHF release to write flags for (default: installed, else {LATEST_TESTED})",
    )
    parser.add_argument(
        "--reward-func",
        action="store_true",
        help="reward through r3_client's reward-function file (API key from R3_API_KEY)",
    )
    args = parser.parse_args(argv)
    path = write_prompts(load_examples(args.dataset), args.out)
    func = None
    if args.reward_func:
        from r3_client.integrations import openrlhf as r3_openrlhf

        func = str(Path(r3_openrlhf.__file__).resolve())
    command = launch_command(
        str(path), args.reward_url, version=args.openrlhf_version, reward_func=func
    )
    sys.stdout.write(command + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
