"""Rollouts (prompts, cutting at end-of-turn and stop strings), data, and model loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_tokenizer

from r3_trainer.config import TrainConfig
from r3_trainer.data import Example, PromptStream, load_examples, split_eval
from r3_trainer.policy import (
    DEFAULT_GGUF_FILE,
    end_of_turn_ids,
    load_policy,
    load_tokenizer,
    resolve_model,
)
from r3_trainer.rollout import (
    cut_response,
    encode_prompts,
    find_stop,
    format_prompt,
    generate_rollouts,
)


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    t = build_tiny_tokenizer()
    t.padding_side = "left"
    return t


def ids(tok, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    return list(tok(text, add_special_tokens=False)["input_ids"])


def test_end_of_turn_ids(tok) -> None:  # type: ignore[no-untyped-def]
    got = end_of_turn_ids(tok)
    vocab = tok.get_vocab()
    assert vocab["<|im_end|>"] in got and vocab["<|endoftext|>"] in got
    assert vocab["the"] not in got


def test_cut_at_end_of_turn_keeps_the_token(tok) -> None:  # type: ignore[no-untyped-def]
    end = end_of_turn_ids(tok)
    seq = ids(tok, "the cat sleeps <|im_end|> big dog")
    kept, text = cut_response(tok, seq, end, [])
    assert kept == 4 and text == "the cat sleeps"


def test_cut_at_stop_string_keeps_its_tokens(tok) -> None:  # type: ignore[no-untyped-def]
    end = end_of_turn_ids(tok)
    seq = ids(tok, "the cat <|im_start|> user the dog")
    kept, text = cut_response(tok, seq, end, ["<|im_start|>"])
    assert kept == 3 and text == "the cat"
    # A stop string spanning several tokens: the shortest prefix containing it is kept.
    seq = ids(tok, "a dog runs and sleeps very happy")
    kept, text = cut_response(tok, seq, end, ["runs and", "happy"])
    assert kept == 4 and text == "a dog"


def test_no_stop_keeps_everything(tok) -> None:  # type: ignore[no-untyped-def]
    seq = ids(tok, "the sun the sea")
    assert cut_response(tok, seq, end_of_turn_ids(tok), ["\n\n\n\n"]) == (4, "the sun the sea")
    # an immediate end of turn: one token kept, empty text
    assert cut_response(tok, ids(tok, "<|im_end|>"), end_of_turn_ids(tok), []) == (1, "")


def test_find_stop_earliest() -> None:
    assert find_stop("abc--def\n\nx", ["\n\n", "--"]) == (3, 5)
    assert find_stop("abc", ["", "z"]) is None


def test_format_and_encode_prompts(tok) -> None:  # type: ignore[no-untyped-def]
    prompt = format_prompt(tok, "the cat", system_prompt="be happy")
    assert prompt.startswith("<|im_start|>system\nbe happy<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert format_prompt(tok, "the cat", use_chat_template=False) == "the cat"
    batch, mask = encode_prompts(tok, ["the cat", "a big red dog runs"], max_length=3)
    assert batch.shape == (2, 3)
    assert mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert tok.decode(batch[1]) == "red dog runs"  # the end of a long prompt is kept
    assert batch[0, 0].item() == tok.pad_token_id


def test_generate_rollouts_masks_match_texts(tiny_lm_dir: Path) -> None:
    cfg = TrainConfig(model=str(tiny_lm_dir), use_lora=True)
    tok = load_tokenizer(cfg)
    policy = load_policy(cfg)
    end = end_of_turn_ids(tok, policy.hf_model().config)
    prompts = [format_prompt(tok, p) for p in ["the cat", "a dog runs", "big sun"] * 3]
    prompt_ids, prompt_mask = encode_prompts(tok, prompts, 64)
    torch.manual_seed(0)
    ro = generate_rollouts(
        policy,
        tok,
        prompt_ids,
        prompt_mask,
        end_ids=end,
        stop_strings=["sea"],
        max_new_tokens=12,
    )
    assert len(ro) == 9 and ro.response_start == prompt_ids.shape[1]
    lengths = ro.lengths.tolist()
    assert max(lengths) == ro.response_mask.shape[1] and min(lengths) >= 1
    for i, n in enumerate(lengths):
        resp = ro.input_ids[i, ro.response_start : ro.response_start + n].tolist()
        assert ro.response_mask[i, :n].all() and not ro.response_mask[i, n:].any()
        again_n, again_text = cut_response(tok, resp, end, ["sea"])
        assert (again_n, again_text) == (n, ro.texts[i])
        assert "sea" not in ro.texts[i] and "<|im_end|>" not in ro.texts[i]
    # log-probs of a response do not depend on the padding around it
    lp, _, values = policy(ro.input_ids, ro.attention_mask, ro.response_start)
    one = ro.select([0])
    lp0, _, _ = policy(one.input_ids, one.attention_mask, one.response_start)
    n0 = lengths[0]
    torch.testing.assert_close(lp[0, :n0], lp0[0, :n0], atol=1e-5, rtol=1e-5)
    assert values is not None and values.shape == lp.shape
    # LoRA starts at zero, so the reference (adapters disabled) equals the policy
    ref = policy.reference_logprobs(ro.input_ids, ro.attention_mask, ro.response_start)
    torch.testing.assert_close(ref, lp)


def test_load_examples_json_and_jsonl(tmp_path: Path) -> None:
    rows = [
        {"input": "a", "output": "b", "qtype": "constrained"},
        {"input": "c"},
        {"input": "d", "output": None, "qtype": None},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    expected = [Example("a", "b", "CONSTRAINED"), Example("c"), Example("d")]
    assert load_examples(tmp_path / "d.json") == expected
    assert load_examples(tmp_path / "d.jsonl") == expected
    for bad in ({"output": "x"}, {"input": "x", "qtype": "OTHER"}, {"input": ""}):
        (tmp_path / "bad.jsonl").write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            load_examples(tmp_path / "bad.jsonl")


def test_prompt_stream_is_deterministic_and_resumable() -> None:
    rows = [Example(str(i)) for i in range(10)]
    a = PromptStream(rows, seed=3)
    first = [e.input for _ in range(5) for e in a.next_batch(4)]  # 2 epochs
    assert sorted(first[:10]) == sorted(str(i) for i in range(10))  # each epoch covers all rows
    assert first[:10] != first[10:20]  # and is reshuffled
    b = PromptStream(rows, seed=3)
    b.next_batch(4)
    c = PromptStream(rows, seed=3)
    c.load_state_dict(b.state_dict())
    assert [e.input for e in c.next_batch(8)] == first[4:12]
    # data-parallel: ranks take disjoint slices of the same global order
    r0, r1 = PromptStream(rows, 3), PromptStream(rows, 3)
    got = [e.input for e in r0.next_batch(2, 0, 2)] + [e.input for e in r1.next_batch(2, 1, 2)]
    assert got == first[:4] and r0.position == r1.position == 4


def test_split_eval() -> None:
    rows = [Example(str(i)) for i in range(20)]
    train, held = split_eval(rows, 5, seed=0)
    assert len(train) == 15 and len(held) == 5 and not set(train) & set(held)
    assert split_eval(rows, 5, seed=0) == (train, held)
    assert split_eval(rows, 0, seed=0) == (rows, [])


def test_resolve_model(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert resolve_model(str(gguf)) == (str(tmp_path), "m.gguf")
    assert resolve_model("org/model") == ("org/model", None)
    folder, name = resolve_model(None)
    assert name == DEFAULT_GGUF_FILE and (Path(folder) / name).is_file()


def test_training_log_probs_match_the_sampler(tiny_lm_dir: Path) -> None:
    """The forward pass used for PPO scores the sampled tokens as generate() saw them."""
    from transformers import GenerationConfig

    cfg = TrainConfig(model=str(tiny_lm_dir), use_lora=False)
    tok = load_tokenizer(cfg)
    policy = load_policy(cfg).eval()
    prompts = [format_prompt(tok, p) for p in ["the cat", "a dog runs and sleeps very"]]
    prompt_ids, prompt_mask = encode_prompts(tok, prompts, 64)  # different lengths: left pad
    torch.manual_seed(0)
    out = policy.hf_model().generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        generation_config=GenerationConfig(
            max_new_tokens=6, do_sample=True, top_k=0, top_p=1.0, eos_token_id=[], pad_token_id=0
        ),
        output_logits=True,
        return_dict_in_generate=True,
    )
    width = prompt_ids.shape[1]
    response = out.sequences[:, width:]
    sampled = torch.stack(out.logits, dim=1).log_softmax(-1)
    expected = sampled.gather(-1, response.unsqueeze(-1)).squeeze(-1)
    mask = torch.cat([prompt_mask, torch.ones_like(response)], dim=1)
    with torch.no_grad():
        logprobs, _, _ = policy(out.sequences, mask, width)
    torch.testing.assert_close(logprobs, expected, atol=1e-4, rtol=1e-4)
