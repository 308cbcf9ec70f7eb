"""Rollouts (prompts, cutting at end-of-turn and stop strings), data, and model loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_lm import build_tiny_tokenizer

from r3_trainer.config import PPOConfig
from r3_trainer.data import Example, PromptStream, load_examples, split_eval
from r3_trainer.policy import (
    DEFAULT_GGUF_FILE,
    end_of_turn_ids,
    load_policy,
    load_tokenizer,
    resolve_model,
)
from r3_trainer.rollout import (
    ALPACA_PREAMBLES,
    Samples,
    encode_prompts,
    format_prompt,
    prefix_tokens,
    sample_responses,
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


def test_prefix_tokens(tok) -> None:  # type: ignore[no-untyped-def]
    seq = ids(tok, "a dog runs and sleeps")  # decoded: "a dog runs and sleeps"
    assert prefix_tokens(tok, seq, 0) == 1  # at least one token
    assert prefix_tokens(tok, seq, 1) == 1  # "a"
    assert prefix_tokens(tok, seq, 2) == 2  # "a dog" is the first prefix past 1 character
    assert prefix_tokens(tok, seq, len("a dog runs")) == 3
    assert prefix_tokens(tok, seq, len("a dog runs and sleeps")) == 5


def samples_of(tok, texts: list[str], eot: bool) -> Samples:  # type: ignore[no-untyped-def]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    responses = [ids(tok, t) + ([end] if eot else []) for t in texts]
    return Samples(
        prompt_ids=torch.zeros((len(texts), 2), dtype=torch.long),
        prompt_mask=torch.ones((len(texts), 2), dtype=torch.long),
        responses=responses,
        texts=[tok.decode(ids(tok, t)) for t in texts],
        text_tokens=[len(ids(tok, t)) for t in texts],
    )


def test_keep_the_tokens_the_reward_accounted_for(tok) -> None:  # type: ignore[no-untyped-def]
    s = samples_of(tok, ["the cat sea big dog", "a dog runs", "the sun"], eot=True)
    # the service cut row 0 after "sea" (stop_end 11), read rows 1 and 2 to their end
    keep = s.keep(tok, [len("the cat sea"), len("a dog runs"), len("the sun") + 5])
    assert keep == [3, 4, 3]  # row 0 drops "big dog" and the end of turn; the others keep it
    assert s.keep(tok, None) == [6, 4, 3]  # no cuts: everything generated
    ro = s.to_rollouts(keep, tok.pad_token_id, ["the cat ", "a dog runs", "the sun"])
    assert ro.response_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert tok.decode(ro.input_ids[0, 2:5]) == "the cat sea" and ro.texts[0] == "the cat "
    assert ro.input_ids[0, 5].item() == tok.pad_token_id
    assert ro.attention_mask[:, 2:].tolist() == ro.response_mask.tolist()


def test_an_immediate_end_of_turn_keeps_one_token(tok) -> None:  # type: ignore[no-untyped-def]
    s = samples_of(tok, [""], eot=True)
    assert s.texts == [""] and s.keep(tok, [0]) == [1]


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


def test_alpaca_prompts(tok) -> None:  # type: ignore[no-untyped-def]
    assert format_prompt(tok, "Name a colour.", alpaca=True) == (
        f"{ALPACA_PREAMBLES[1]}\n\n### Instruction:\nName a colour.\n\n### Response:"
    )
    row = "Sort these.\n\n### Input:\n3, 1, 2"
    assert format_prompt(tok, row, alpaca=True) == (
        f"{ALPACA_PREAMBLES[0]}\n\n### Instruction:\nSort these.\n\n### Input:\n3, 1, 2"
        "\n\n### Response:"
    )
    assert format_prompt(tok, "x", "Be brief.", alpaca=True).startswith("Be brief.\n\n### Instr")


def test_sample_responses_stop_early_and_trim_padding(tiny_lm_dir: Path) -> None:
    cfg = PPOConfig(model=str(tiny_lm_dir), use_lora=True)
    tok = load_tokenizer(cfg)
    policy = load_policy(cfg)
    end = end_of_turn_ids(tok, policy.hf_model().config)
    prompts = [format_prompt(tok, p) for p in ["the cat", "a dog runs", "big sun"] * 3]
    prompt_ids, prompt_mask = encode_prompts(tok, prompts, 64)
    torch.manual_seed(0)
    stops = ["sea", "tree"]
    s = sample_responses(
        policy,
        tok,
        prompt_ids,
        prompt_mask,
        end_ids=end,
        stop_strings=stops,
        max_new_tokens=12,
    )
    assert len(s.responses) == len(s.texts) == 9
    for response, text, n in zip(s.responses, s.texts, s.text_tokens):
        assert 1 <= len(response) <= 12 and tok.decode(response[:n]) == text
        ended = response[-1] in end
        assert n == len(response) - ended
        hits = [stop for stop in stops if stop in text]
        if hits:  # stopped at the first stop string (the padding after it is dropped)
            assert any(text.endswith(stop) for stop in hits) and not ended
            assert not any(stop in tok.decode(response[: n - 1]) for stop in stops)
        elif not ended:  # neither stopped nor ended: ran to max_new_tokens
            assert len(response) == 12
    assert any(any(stop in t for stop in stops) for t in s.texts)  # the stop path ran
    ro = s.to_rollouts(s.keep(tok, None), tok.pad_token_id, s.texts)
    assert ro.lengths.tolist() == [len(r) for r in s.responses]
    # log-probs of a response do not depend on the padding around it
    lp, _, values = policy(ro.input_ids, ro.attention_mask, ro.response_start)
    one = ro.select([0])
    lp0, _, _ = policy(one.input_ids, one.attention_mask, one.response_start)
    n0 = len(s.responses[0])
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

    cfg = PPOConfig(model=str(tiny_lm_dir), use_lora=False)
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
