"""Rewards/s each framework adapter delivers to its framework's calling pattern, side by side.

On the same items, in interleaved rounds against one server (embedding cache off, so no
scorer profits from another's work):

- direct:        ``Client.reward`` on all items at once (the client splits and sends 4 at a time);
- openrlhf-http: OpenRLHF's own ``_fetch_rewards_via_http``, one call per sample, all at once
                 (``/openrlhf/reward``, one aiohttp session per call, as OpenRLHF does);
- openrlhf-func: OpenRLHF's own ``_fetch_rewards_via_func`` with ``r3_client``'s reward-function
                 file, one call per sample from a 32-thread pool (asyncio's default on 28+ CPUs);
- verl-loop:     veRL's ``RewardLoopWorker.compute_score_batch`` (one ``NaiveRewardManager``
                 task per sample on one event loop) with the async ``compute_score``;
- trl-async / trl-sync: ``AsyncR3Reward`` / ``R3Reward`` called once per step on 64
                 completions (8 prompts x 8 generations), step after step.

Prints rewards/s, the ratio to direct (median of per-round ratios) and the largest reward
difference from direct (speed must not change a reward).

Short answers (``--words``, default 32) keep the server fast enough for the adapters' own
costs (one request per sample, batching windows, thread hops) to show.

    python bench/bench_adapters.py [--items 256] [--rounds 5] [--words 32] [--model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _server import start_server

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "alpacafarm_qtype.json"
TRL_BATCH = 64
log = logging.getLogger("bench_adapters")
Item = dict[str, Any]


def load_items(path: Path, n: int, words: int) -> list[Item]:
    """Plain queries (the Alpaca input block joined in), dataset answers (their first
    ``words`` words) as responses and references."""
    if path.is_file():
        rows = json.loads(path.read_text())[:n]
    else:
        log.warning("%s not found: using synthetic items", path)
        rows = [
            {"input": f"Explain topic {i} briefly.", "output": f"Topic {i} is " + "x y " * i}
            for i in range(n)
        ]
        rows = [{**r, "qtype": "OPENENDED" if i % 2 else "CONSTRAINED"} for i, r in enumerate(rows)]
    items = []
    for i, row in enumerate(rows):
        query = " ".join(row["input"].replace("### Input:", " ").split())
        response = " ".join(row["output"].split()) + f" ({i})"
        items.append(
            {
                "query": query,
                "response": response,
                "reference": row["output"],
                "qtype": row["qtype"],
            }
        )
    return items


def chatml(query: str) -> str:
    return f"<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"


def direct(url: str, items: list[Item]) -> list[float]:
    from r3_client import Client

    with Client(base_url=url) as client:
        return client.reward(
            query=[it["query"] for it in items],
            response=[it["response"] for it in items],
            reference=[it["reference"] for it in items],
            qtype=[it["qtype"] for it in items],
        ).rewards


def openrlhf_calls(items: list[Item]) -> list[tuple[str, str, str]]:
    label = [json.dumps({"reference": it["reference"], "qtype": it["qtype"]}) for it in items]
    return [
        (chatml(it["query"]) + it["response"] + "<|im_end|>", chatml(it["query"]), lab)
        for it, lab in zip(items, label)
    ]


def openrlhf_scorer(url: str, func: bool) -> Callable[[list[Item]], list[float]]:
    """OpenRLHF's per-sample reward calls, all samples at once."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    import r3_client.integrations.openrlhf as r3_openrlhf

    os.environ["R3_BASE_URL"] = url
    target = str(Path(r3_openrlhf.__file__)) if func else url + "/openrlhf/reward"
    executor = SingleTurnAgentExecutor(remote_rm_url=target)
    fetch = executor._fetch_rewards_via_func if func else executor._fetch_rewards_via_http

    async def run(items: list[Item]) -> list[float]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32))
        calls = openrlhf_calls(items)
        infos = await asyncio.gather(*(fetch([q], [p], [lab]) for q, p, lab in calls))
        return [float(info[0]["rewards"][0]) for info in infos]

    return lambda items: asyncio.run(run(items))


def train_tokenizer(items: list[Item], folder: Path) -> Any:
    """A byte-level BPE tokenizer (exact round trip) with ChatML markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [it["query"] + " " + it["response"] for it in items]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=2000,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    return fast


def verl_batch(tokenizer: Any, items: list[Item]) -> Any:
    """A veRL DataProto: left-padded prompts, right-padded responses, non-tensor columns."""
    import numpy as np
    import torch
    from verl import DataProto

    enc = [tokenizer(chatml(it["query"]), add_special_tokens=False)["input_ids"] for it in items]
    res = [tokenizer(it["response"] + "<|im_end|>")["input_ids"] for it in items]
    p_len, r_len, pad = max(map(len, enc)), max(map(len, res)), tokenizer.pad_token_id
    mask = [
        [0] * (p_len - len(p)) + [1] * (len(p) + len(r)) + [0] * (r_len - len(r))
        for p, r in zip(enc, res)
    ]

    def column(values: list[Any]) -> Any:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    return DataProto.from_dict(
        tensors={
            "prompts": torch.tensor([[pad] * (p_len - len(p)) + p for p in enc]),
            "responses": torch.tensor([r + [pad] * (r_len - len(r)) for r in res]),
            "attention_mask": torch.tensor(mask),
        },
        non_tensors={
            "data_source": column(["alpacafarm"] * len(items)),
            "reward_model": column([{"ground_truth": it["reference"]} for it in items]),
            "extra_info": column([{"question": it["query"], "qtype": it["qtype"]} for it in items]),
        },
    )


def verl_scorer(url: str, items: list[Item], folder: Path) -> Callable[[list[Item]], list[float]]:
    """veRL's reward-loop worker with the async ``compute_score``."""
    import omegaconf
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    os.environ["R3_BASE_URL"] = url
    tokenizer = train_tokenizer(items, folder)
    cfg = omegaconf.OmegaConf.create(
        {
            "actor_rollout_ref": {"model": {"path": str(folder), "tokenizer_path": None}},
            "reward": {
                "reward_model": {"enable": False},
                "custom_reward_function": {
                    "path": "pkg://r3_client.integrations.verl",
                    "name": "compute_score",
                    "reward_kwargs": {},
                },
                "reward_manager": {"source": "register", "name": "naive"},
            },
        }
    )
    worker = RewardLoopWorker(cfg)

    def run(batch_items: list[Item]) -> list[float]:
        data = verl_batch(tokenizer, batch_items)
        outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))
        return [float(o["reward_score"]) for o in outputs]

    return run


def trl_scorer(url: str, asynchronous: bool) -> Callable[[list[Item]], list[float]]:
    """TRL's pattern: one reward call per step on a batch of completions."""
    from r3_client.integrations.trl import AsyncR3Reward, R3Reward

    def batches(items: list[Item]) -> list[tuple[list[str], list[str], dict[str, list[Any]]]]:
        out = []
        for start in range(0, len(items), TRL_BATCH):
            part = items[start : start + TRL_BATCH]
            columns = {k: [it[k] for it in part] for k in ("reference", "qtype")}
            out.append(([it["query"] for it in part], [it["response"] for it in part], columns))
        return out

    if asynchronous:
        reward = AsyncR3Reward(base_url=url)
        loop = asyncio.new_event_loop()

        async def steps(items: list[Item]) -> list[float]:
            return [
                float(r or 0.0) for p, c, kw in batches(items) for r in await reward(p, c, **kw)
            ]

        return lambda items: loop.run_until_complete(steps(items))
    sync = R3Reward(base_url=url)
    return lambda items: [float(r or 0.0) for p, c, kw in batches(items) for r in sync(p, c, **kw)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=None, help="exported model folder (default: embedded)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--words", type=int, default=32, help="words kept of each answer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    items = load_items(args.data, args.items * args.rounds, args.words)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = start_server(port, args.model, env={"R3_CACHE_BYTES": "0"})
    url = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report(url, items, args.items, args.rounds, Path(tmp))
    finally:
        server.terminate()
        server.wait(30)


def report(url: str, items: list[Item], n: int, rounds: int, tmp: Path) -> None:
    scorers: dict[str, Callable[[list[Item]], list[float]]] = {
        "direct": lambda its: direct(url, its),
        "openrlhf-http": openrlhf_scorer(url, func=False),
        "openrlhf-func": openrlhf_scorer(url, func=True),
        "verl-loop": verl_scorer(url, items, tmp),
        "trl-async": trl_scorer(url, asynchronous=True),
        "trl-sync": trl_scorer(url, asynchronous=False),
    }
    scorers["direct"](items[:16])  # warm up connections and the server
    rates: dict[str, list[float]] = {name: [] for name in scorers}
    diffs: dict[str, float] = {name: 0.0 for name in scorers}
    for r in range(rounds):
        part = items[r * n : (r + 1) * n]
        results = {}
        for name, score in scorers.items():
            start = time.perf_counter()
            results[name] = score(part)
            rates[name].append(len(part) / (time.perf_counter() - start))
        for name, got in results.items():
            gap = max(abs(a - b) for a, b in zip(got, results["direct"]))
            diffs[name] = max(diffs[name], gap)
    lines = [f"{n} items x {rounds} rounds, rewards/s (rounds), ratio to direct (median):"]
    for name, rate in rates.items():
        ratio = statistics.median(a / b for a, b in zip(rate, rates["direct"]))
        shown = ", ".join(f"{x:.0f}" for x in rate)
        lines.append(
            f"  {name:14s} {statistics.median(rate):7.1f} rewards/s  ({shown})  "
            f"x{ratio:.2f}  max |reward - direct| = {diffs[name]:.1e}"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
