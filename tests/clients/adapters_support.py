"""Helpers for the framework adapter tests: a real tokenizer, a gated in-process server,
and reading the server's /metrics."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tests_support import free_port, poll_until

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_bpe_tokenizer(corpus: Sequence[str], folder: Path | None = None) -> Any:
    """A byte-level BPE tokenizer with ChatML markers, trained on ``corpus`` (round-trips text
    exactly, like the causal-LM tokenizers trainers use); saved to ``folder`` if given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        list(corpus) * 4,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = CHATML
    if folder is not None:
        tokenizer.save_pretrained(folder)
    return tokenizer


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


class GatedEncoder:
    """The real encoder; inference blocks until ``gate`` is set (to hold the queue full)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.profile = inner.profile
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        result: list[np.ndarray] = self.inner.tokenize(texts)
        return result

    def embed_tokens(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        self.gate.wait()
        result: np.ndarray = self.inner.embed_tokens(batch)
        return result


class InProcessServer:
    """A real uvicorn server in a thread, around ``create_app`` with a given encoder."""

    def __init__(self, encoder: Any, **settings: Any) -> None:
        import uvicorn

        from r3_service.api.app import create_app
        from r3_service.config import Settings

        self.url = f"http://127.0.0.1:{free_port()}"
        app = create_app(Settings(**settings), encoder_factory=lambda _: encoder)
        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()

        def ready() -> bool:
            try:
                return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        poll_until(ready, "the in-process server")
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
