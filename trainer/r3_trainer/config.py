"""The trainer's one config: a dataclass whose fields carry their own one-line help.

Defaults follow the paper's PPO setup (docs/reward.md, "The paper's PPO setup"; TRL-style PPO).
Values come from the defaults, then a YAML/JSON file (``--config``), then command-line flags.
The flags are made by transformers' ``HfArgumentParser`` from the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import HfArgumentParser

__all__ = [
    "PPOConfig",
    "build_parser",
    "config_from_args",
    "config_table",
    "field_docs",
    "load_config_file",
]

#: Values of ``query_format``: how the service reads each row's input as the query.
QUERY_FORMATS = ("alpaca", "text")
#: How advantages are estimated: a learned value head (GAE) or group baselines (no critic).
ADVANTAGE_ESTIMATORS = ("gae", "rloo", "group_norm")


def _f(default: Any, doc: str) -> Any:
    """A dataclass field with a default and a one-line help (shown by ``--help``)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": doc})
    return field(default=default, metadata={"help": doc})


@dataclass
class PPOConfig:
    """Every setting of ``r3-train``; each field's ``metadata["help"]`` says what it does."""

    # -- model and LoRA ---------------------------------------------------
    model: str | None = _f(
        None,
        "Policy: a causal-LM folder, hub id or .gguf file; unset = bundled SmolLM2-135M-Instruct.",
    )
    gguf_file: str | None = _f(None, "GGUF file name inside the --model folder, if any.")
    tokenizer: str | None = _f(None, "Tokenizer folder or hub id; unset = the model's.")
    dtype: str = _f("float32", "Weights dtype: float32, bfloat16 or float16.")
    use_lora: bool = _f(True, "Train LoRA adapters (the reference is the base, adapters off).")
    lora_r: int = _f(8, "LoRA rank r.")
    lora_alpha: int = _f(16, "LoRA alpha (scale alpha/r).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input.")
    lora_target_modules: list[str] = _f(["q_proj", "v_proj"], "Modules that get LoRA adapters.")
    value_head_dropout: float = _f(0.1, "Dropout before the value head (TRL's ValueHead).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")

    # -- data -------------------------------------------------------------
    dataset: str | None = _f(None, 'JSON or JSONL rows {"input", "output"?, "qtype"?}.')
    eval_dataset: str | None = _f(None, "Held-out rows; unset = hold out eval_size training rows.")
    eval_size: int = _f(16, "Rows held out of --dataset for evaluation when no eval_dataset.")
    system_prompt: str | None = _f(None, "System message put before each prompt, if any.")
    use_chat_template: bool = _f(True, "Wrap prompts in the tokenizer's chat template.")
    alpaca_template: bool = _f(
        False, "Wrap prompts in the Alpaca template (the authors' SFT format) instead."
    )
    max_prompt_length: int = _f(512, "Prompt tokens kept (the end is kept when longer).")

    # -- reward service -----------------------------------------------------
    reward_url: str = _f("http://127.0.0.1:8000", "Base URL of the R^3 reward service.")
    api_key: str | None = _f(None, "API key for the service; unset = R3_API_KEY if set.")
    reward_options: dict[str, Any] = _f(
        {}, 'Options of POST /reward, e.g. {"relevance": false} (JSON on the command line).'
    )
    query_format: str = _f(
        "alpaca", "How the service reads each input as the query: alpaca (the authors') or text."
    )
    reward_timeout: float = _f(120.0, "Seconds one HTTP request to the service may take.")
    reward_max_retries: int = _f(3, "Quick retries inside the HTTP client per request.")
    reward_patience: float | None = _f(
        None, "Seconds to keep retrying an unreachable service; unset = wait forever."
    )
    reward_backoff_max: float = _f(60.0, "Longest pause between patient retries, in seconds.")

    # -- sampling -----------------------------------------------------------
    max_new_tokens: int = _f(512, "Most tokens sampled per response.")
    temperature: float = _f(1.0, "Sampling temperature.")
    top_p: float = _f(1.0, "Nucleus sampling threshold (1.0 = off).")
    top_k: int = _f(0, "Top-k sampling (0 = off).")
    stop_strings: list[str] | None = _f(
        None, "Strings the service cuts responses at; unset = the service's defaults."
    )
    generation_batch_size: int | None = _f(None, "Prompts sampled at once; unset = batch_size.")
    forward_batch_size: int = _f(4, "Rollouts per no-grad forward pass (log-probs, values).")

    # -- PPO ----------------------------------------------------------------
    steps: int = _f(100, "PPO steps (batches of rollouts) to train in total.")
    batch_size: int = _f(16, "Rollouts per PPO step (per process).")
    samples_per_prompt: int = _f(
        1, "Responses sampled per prompt; batch_size counts responses (a multiple of this)."
    )
    advantage_estimator: str = _f(
        "gae",
        "gae (value head), rloo (mean of the prompt's other responses) or group_norm (GRPO).",
    )
    mini_batch_size: int = _f(2, "Rollouts per forward/backward pass.")
    gradient_accumulation_steps: int = _f(4, "Mini-batches accumulated per optimizer step.")
    ppo_epochs: int = _f(4, "Passes over each batch of rollouts.")
    learning_rate: float = _f(1e-5, "Adam learning rate.")
    lr_scheduler: str = _f("constant", "transformers scheduler name: constant, linear, cosine.")
    warmup_steps: int = _f(0, "Optimizer steps of linear warm-up.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float | None = _f(None, "Clip the gradient norm to this; unset = no clipping.")
    gamma: float = _f(1.0, "Discount factor of GAE.")
    lam: float = _f(0.95, "Lambda of GAE.")
    cliprange: float = _f(0.2, "Clip range of the policy ratio.")
    cliprange_value: float = _f(0.2, "Clip range of the value prediction.")
    vf_coef: float = _f(1.0, "Weight of the value loss.")
    ratio_threshold: float = _f(10.0, "Skip a mini-batch whose mean ratio exceeds this.")
    whiten_rewards: bool = _f(False, "Whiten per-token rewards before GAE.")
    kl_penalty: str = _f("kl", "Per-token KL estimate: kl (logp - ref), abs or mse.")
    init_kl_coef: float = _f(0.2, "Initial KL coefficient beta.")
    adap_kl_ctrl: bool = _f(True, "Adapt beta to reach target_kl (Ziegler et al. 2019).")
    target_kl: float = _f(6.0, "Target KL of the adaptive controller (nats per response).")
    kl_horizon: int = _f(10000, "Horizon of the adaptive KL controller (in rollouts).")
    use_score_scaling: bool = _f(True, "Divide scores by their running standard deviation.")
    use_score_norm: bool = _f(True, "Also subtract the running mean (needs score scaling).")
    score_clip: float | None = _f(10.0, "Clip processed scores to [-clip, clip]; unset = none.")

    # -- run ----------------------------------------------------------------
    seed: int = _f(0, "Random seed (data order, sampling, dropout).")
    output_dir: str = _f("outputs/r3-ppo", "Where metrics, logs, plots and checkpoints go.")
    resume: str | None = _f(None, "Checkpoint folder to resume, or 'latest' in output_dir.")
    save_every: int = _f(50, "Save a checkpoint every N steps (and at the end); 0 = end only.")
    keep_checkpoints: int | None = _f(3, "Checkpoints kept on disk (oldest removed); unset = all.")
    eval_every: int = _f(25, "Evaluate on held-out prompts every N steps (and at the end); 0 = no.")
    eval_batch_size: int = _f(16, "Held-out prompts per evaluation.")
    eval_samples: int = _f(4, "Samples shown in the evaluation table of the log.")
    eval_greedy: bool = _f(True, "Decode greedily at evaluation (else sample like training).")
    tensorboard: bool = _f(True, "Write TensorBoard logs under output_dir/tensorboard.")
    plot: bool = _f(True, "Write output_dir/training.png (at the end and with each checkpoint).")
    progress_bar: bool = _f(True, "Show a tqdm progress bar.")
    cpu: bool = _f(False, "Train on the CPU even when a GPU is present.")

    def __post_init__(self) -> None:
        if self.kl_penalty not in ("kl", "abs", "mse"):
            raise ValueError(f"kl_penalty must be kl, abs or mse, not {self.kl_penalty!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, not {self.dtype!r}")
        if self.query_format not in QUERY_FORMATS:
            raise ValueError(f"query_format must be alpaca or text, not {self.query_format!r}")
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"advantage_estimator must be gae, rloo or group_norm, not "
                f"{self.advantage_estimator!r}"
            )
        if self.samples_per_prompt < 1:
            raise ValueError("samples_per_prompt must be >= 1")
        if self.batch_size % self.samples_per_prompt:
            raise ValueError("batch_size must be a multiple of samples_per_prompt")
        if self.advantage_estimator != "gae" and self.samples_per_prompt < 2:
            raise ValueError(
                f"advantage_estimator {self.advantage_estimator} needs samples_per_prompt >= 2"
            )
        if self.batch_size % self.mini_batch_size:
            raise ValueError("batch_size must be a multiple of mini_batch_size")
        for name in ("steps", "batch_size", "mini_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        for name in ("stop_strings", "query_format"):
            if name in self.reward_options:
                raise ValueError(f"set {name} as its own setting, not in reward_options")

    @property
    def backward_batch_size(self) -> int:
        """Rollouts per optimizer step: mini_batch_size x gradient_accumulation_steps."""
        return self.mini_batch_size * self.gradient_accumulation_steps

    def service_options(self) -> dict[str, Any]:
        """The ``options`` of each ``POST /reward``: reward_options, query_format, stop_strings."""
        options = {**self.reward_options, "query_format": self.query_format}
        if self.stop_strings is not None:
            options["stop_strings"] = list(self.stop_strings)
        return options

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able values."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> PPOConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PPOConfig:
        """Build from a mapping; keys may use dashes; unknown keys are an error."""
        return cls(**_clean_keys(data))


def _clean_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with dashes in keys turned into underscores; unknown keys are an error."""
    clean = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(clean) - {f.name for f in dataclasses.fields(PPOConfig)})
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(unknown)}")
    return clean


def field_docs() -> dict[str, str]:
    """``{field name: one-line help}`` in declaration order."""
    return {f.name: str(f.metadata["help"]) for f in dataclasses.fields(PPOConfig)}


def config_table() -> str:
    """The Markdown table of all settings (flag, default, help), as in docs/trainer.md."""
    defaults = PPOConfig()
    lines = ["| setting / flag | default | what it does |", "|---|---|---|"]
    for name, doc in field_docs().items():
        shown = json.dumps(getattr(defaults, name))
        flag = "--" + name.replace("_", "-")
        lines.append(f"| `{name}` / `{flag}` | `{shown}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a mapping."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return data


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _nullable(convert: Any) -> Any:
    """``convert``, except that none/null/an empty string give None."""

    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _is_nullable(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _parser_class() -> type[HfArgumentParser]:
    """HfArgumentParser, with the few flag shapes it has no type for."""
    from transformers import HfArgumentParser

    hints = typing.get_type_hints(PPOConfig)

    class ConfigParser(HfArgumentParser):
        """Adds JSON objects, ``none`` for optional values, empty lists and a bare --resume."""

        def add_argument(self, *flags: Any, **kwargs: Any) -> argparse.Action:
            dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
            hint = hints.get(dest)
            if dest == "resume":
                kwargs.update(nargs="?", const="latest", metavar="CHECKPOINT")
            elif typing.get_origin(hint) is dict:
                kwargs.update(type=_json_object, metavar="JSON")
            elif kwargs.get("nargs") == "+":
                kwargs["nargs"] = "*"  # "--stop-strings" alone: an empty list
            elif _is_nullable(hint) and kwargs.get("type") in (int, float, str):
                kwargs["type"] = _nullable(kwargs["type"])
            if flags[0].startswith("--no_"):
                kwargs["help"] = f"Set {dest} to false."
            elif hint is not None and kwargs.get("help"):
                kwargs["help"] = kwargs["help"].replace("%", "%%") + " (default: %(default)r)"
            return super().add_argument(*flags, **kwargs)

    return ConfigParser


def build_parser() -> HfArgumentParser:
    """The ``r3-train`` argument parser: ``--config`` plus one flag per config field."""
    parser = _parser_class()(
        PPOConfig,  # type: ignore[arg-type]  # transformers types it as a NewType
        prog="r3-train",
        formatter_class=argparse.HelpFormatter,  # defaults are in each help, not on --no-* flags
        description="PPO (TRL-style, as in arXiv 2402.03469) with rewards from an R^3 service.",
    )
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it).")
    parser.add_argument(
        "--print-config", action="store_true", help="Print the resolved config as YAML and exit."
    )
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> tuple[PPOConfig, argparse.Namespace]:
    """Resolve defaults, then ``--config FILE``, then flags; return the config and the rest.

    The file's values become the parser's defaults, so any flag given overrides them.
    """
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    try:
        if known.config:
            parser.set_defaults(**_clean_keys(load_config_file(known.config)))
        cfg, rest = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except (TypeError, ValueError) as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits
    return cfg, rest


if __name__ == "__main__":  # python -m r3_trainer.config: the settings table of the docs
    import sys

    sys.stdout.write(config_table() + "\n")
