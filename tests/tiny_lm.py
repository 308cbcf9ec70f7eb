"""A tiny random causal LM with a word-level chat tokenizer, for tests that train a policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL = ["<pad>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
WORDS = (
    "user assistant system the a cat dog sun sea tree red blue green big small runs sleeps "
    "eats sings and or but very happy sad river hill"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPTS = [
    "the cat sleeps",
    "a dog runs",
    "the sun and the sea",
    "big red tree",
    "small blue river",
    "the dog eats",
    "a happy cat sings",
    "green hill",
    "the sad dog",
    "very big sun",
    "a small tree",
    "the river runs",
]


def build_tiny_tokenizer() -> Any:
    """A word-level tokenizer over a few words, with ChatML specials and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*SPECIAL, *WORDS, "<unk>"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL[1:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_lm(folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer Llama and the tiny tokenizer into ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
