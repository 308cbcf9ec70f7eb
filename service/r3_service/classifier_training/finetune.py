"""Fine-tune a BERT-family encoder end to end as the query-type classifier (needs torch).

The model is the encoder with LoRA adapters on its linear layers, mean pooling over
non-padding tokens (as the service's ONNX export does) and a linear head giving the
logit of OPENENDED. Only the adapters and the head are trained and stored; at first
start they are merged into the base weights (numpy, :mod:`r3_service.classifier.adapter`)
and exported to ONNX like any encoder. ``full=True`` trains every weight instead (for
comparison only: its result cannot be stored as a small adapter).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from r3_service.classifier.text import head_tail, plain_prompt
from r3_service.classifier_training.augment import augment_text
from r3_service.encoder.bert_onnx import BERT_LAYER_LINEARS

logger = logging.getLogger(__name__)

#: Linear layers of a BERT block that get LoRA adapters: all of them.
LORA_TARGETS = BERT_LAYER_LINEARS


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters (chosen on AlpacaFarm's shifted split, see bench/classifier_sweep.py)."""

    epochs: int = 4
    batch_size: int = 32
    lr: float = 5e-4
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    #: Rewrites of each prompt per epoch (fresh ones every epoch), next to the prompt itself.
    augment_copies: int = 1
    #: Tokens kept: the first half and the last half of longer prompts.
    max_length: int = 128
    full: bool = False
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _lora_linear_class() -> Any:
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        """``base(x) + scale * B(A(dropout(x)))`` with ``base`` frozen."""

        def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
            super().__init__()
            self.base = base
            for p in base.parameters():
                p.requires_grad_(False)
            self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.scale = alpha / rank
            self.dropout = nn.Dropout(dropout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            delta = (self.dropout(x) @ self.lora_A.t()) @ self.lora_B.t()
            return self.base(x) + delta * self.scale

    return LoRALinear


def build_model(base_dir: Path | str, config: FinetuneConfig) -> Any:
    """The encoder (LoRA-wrapped unless ``config.full``) with a linear head on mean pooling."""
    import torch
    from torch import nn
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(base_dir), dtype=torch.float32)
    if not config.full:
        for p in encoder.parameters():
            p.requires_grad_(False)
        lora = _lora_linear_class()
        for name, module in list(encoder.named_modules()):
            for child_name, child in list(module.named_children()):
                full_name = f"{name}.{child_name}" if name else child_name
                if isinstance(child, nn.Linear) and full_name.endswith(LORA_TARGETS):
                    if ".layer." in full_name:
                        wrapped = lora(
                            child, config.lora_rank, config.lora_alpha, config.lora_dropout
                        )
                        setattr(module, child_name, wrapped)

    class QTypeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = nn.Linear(int(encoder.config.hidden_size), 1)

        def pooled(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.pooled(ids, mask).float()).squeeze(-1)

    return QTypeNet()


class _Tokens:
    """Tokenizer with head+tail truncation and right padding."""

    def __init__(self, base_dir: Path | str, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(Path(base_dir) / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_length = max_length
        self.pad_id = int(self.tokenizer.token_to_id("[PAD]") or 0)

    def __call__(self, texts: Sequence[str]) -> tuple[Any, Any]:
        import torch

        rows = [head_tail(e.ids, self.max_length) for e in self.tokenizer.encode_batch(texts)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask


def _device(name: str | None) -> Any:
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_model(
    texts: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    base_dir: Path | str,
    config: FinetuneConfig,
    *,
    device: str | None = None,
) -> Any:
    """Fine-tune on ``texts`` (Alpaca or plain prompts) with 0/1 labels (1 = OPENENDED)."""
    import torch

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    dev = _device(device)
    model = build_model(base_dir, config).to(dev)
    tokens = _Tokens(base_dir, config.max_length)
    plain = [plain_prompt(t) for t in texts]
    y_all = [int(v) for v in labels]
    per_epoch = len(plain) * (1 + config.augment_copies)
    steps = config.epochs * math.ceil(per_epoch / config.batch_size)
    head_params = list(model.head.parameters())
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head")]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": config.lr}, {"params": head_params, "lr": config.head_lr}],
        weight_decay=config.weight_decay,
    )
    warm = max(1, int(config.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(1, steps - warm))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    autocast = dev.type == "cuda"
    model.train()
    started = time.perf_counter()
    for epoch in range(config.epochs):
        batch_texts = list(plain)
        batch_y = list(y_all)
        for _ in range(config.augment_copies):
            batch_texts += [augment_text(t, rng) for t in texts]
            batch_y += y_all
        order = list(range(len(batch_texts)))
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            chunk = order[start : start + config.batch_size]
            ids, mask = tokens([batch_texts[i] for i in chunk])
            target = torch.tensor([batch_y[i] for i in chunk], dtype=torch.float32, device=dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(ids.to(dev), mask.to(dev))
            loss = loss_fn(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        logger.info("epoch %d done in %.0f s", epoch + 1, time.perf_counter() - started)
    model.eval()
    return model


def predict_logits(
    model: Any, texts: Sequence[str], base_dir: Path | str, config: FinetuneConfig, batch: int = 64
) -> np.ndarray:
    """Logits of OPENENDED for ``texts`` (plain or Alpaca prompts), float64."""
    import torch

    tokens = _Tokens(base_dir, config.max_length)
    dev = next(model.parameters()).device
    plain = [plain_prompt(t) for t in texts]
    out = np.zeros(len(plain))
    order = sorted(range(len(plain)), key=lambda i: len(plain[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            ids, mask = tokens([plain[i] for i in chunk])
            out[chunk] = model(ids.to(dev), mask.to(dev)).float().cpu().numpy()
    return out


def adapter_tensors(model: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """The trainable tensors as numpy, keyed like the base model's weights.

    ``encoder.layer.0.attention.self.query.lora_A`` etc. (the base model's own
    names with ``.lora_A`` / ``.lora_B``), plus ``head.weight`` and ``head.bias``.
    """
    out: dict[str, np.ndarray] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = name.removeprefix("encoder.").replace(".base.", ".")
        out[prefix + key] = param.detach().float().cpu().numpy()
    return out
