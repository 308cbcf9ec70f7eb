"""Does a policy get better from R^3 over HTTP? PPO arms, held-out evaluation, independent judge.

    python bench/learning.py --short --out /tmp/learning        # full R^3 only, <= 20 min
    python bench/learning.py --out bench/results/learning        # every arm (the paper's ablations)

Trains the bundled policy (SmolLM2-135M-Instruct, LoRA) with ``r3_trainer`` against a live
R^3 service (started here on the embedded default unless ``--reward-url``) on AlpacaFarm
prompts, in arms that differ only in the reward options:

- ``full``: R^3;
- ``relevance``: relevance only (length incentive and repetition penalty off);
- ``relevance_li``: relevance and length incentive, no repetition penalty;
- ``no_branching``: R^3 with every item scored as OPENENDED (R_OE).

Every arm starts from the same policy with the same seed, data order and settings. Before
training (once: the untrained LoRA policy is the base model) and after each arm, the policy
answers ``--eval-size`` held-out prompts that training never sees (half of each query type,
greedy), and each answer gets:

- the held-out R^3 reward (full R^3, query type given, whatever the arm trained on) and the
  arm's own training reward;
- the judge: cosine similarity under all-mpnet-base-v2, an encoder the reward never sees
  (``bench/judge.py``), to the query for OPENENDED prompts and to the reference answer for
  CONSTRAINED ones;
- length (words), repetition (share of repeated word trigrams), whether it copies the query
  (the service's rule), whether it is empty, and whether it was cut off at ``max_new_tokens``.

Start-to-end differences come with 95% paired bootstrap intervals over prompts, for each query
type apart and together. ``OUT/summary.json`` holds the figures, ``OUT/results.md`` the table,
samples and settings, ``OUT/curves.png`` the arms' training curves (reward, KL, length, judge on
the training rollouts), ``OUT/<arm>/metrics.jsonl`` the trainer's per-step rows and
``OUT/eval_<arm>.jsonl`` every held-out answer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _server import service
from judge import Judge, bootstrap_mean_ci, repeated_trigram_share

from r3_client import Client
from r3_service.data import ALPACAFARM_QTYPE
from r3_service.reward.text import alpaca_query, copies_query, wordpunct_tokenize
from r3_trainer.config import PPOConfig
from r3_trainer.data import Example, load_examples
from r3_trainer.logging_utils import read_metrics
from r3_trainer.rewards import HTTPReward, Scores

log = logging.getLogger("learning")

QTYPES = ("OPENENDED", "CONSTRAINED")


@dataclass(frozen=True)
class Arm:
    """One training arm: the reward options it trains on, and what the paper found for it."""

    title: str
    options: dict[str, Any]
    paper: str


ARMS: dict[str, Arm] = {
    "full": Arm("R^3", {}, "preference and relevance up, little alignment tax"),
    "relevance": Arm(
        "relevance only",
        {"length_incentive": False, "repetition_penalty": False},
        "hacked: short answers, ~40% copy the question",
    ),
    "relevance_li": Arm(
        "relevance + LI, no RP",
        {"repetition_penalty": False},
        "the policy repeats the same sentence",
    ),
    "no_branching": Arm(
        "R_OE (no branching)",
        {"reward_branching": False},
        "relevance up, a tax on closed/factual prompts",
    ),
}


@dataclass(frozen=True)
class Settings:
    """What every arm trains with (chosen by measurement: see docs/trainer.md, "Does it learn?").

    Four responses per prompt with RLOO baselines instead of a value head: with one response
    per prompt and a critic that never fitted, the first run drifted (KL 2.5) and lost reward.
    One PPO epoch of mini-batch 4 x 2 keeps a step near 80 s on one core, so 28 steps and two
    held-out evaluations fit 45 minutes per arm; lr 1e-3: at 2e-4 the LoRA policy barely moved
    (KL under 0.25 after 28 steps).
    """

    steps: int = 28
    batch_size: int = 16
    samples_per_prompt: int = 4
    advantage_estimator: str = "rloo"
    mini_batch_size: int = 4
    gradient_accumulation_steps: int = 2
    ppo_epochs: int = 1
    learning_rate: float = 1e-3
    max_new_tokens: int = 64
    eval_size: int = 128
    seed: int = 0
    #: Comma-separated modules that get LoRA adapters (the paper: q_proj,v_proj).
    lora_target_modules: str = "q_proj,v_proj"

    def ppo_config(self, **changes: Any) -> PPOConfig:
        """The trainer's config for one arm: these settings, the paper's for the rest."""
        return PPOConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            samples_per_prompt=self.samples_per_prompt,
            advantage_estimator=self.advantage_estimator,
            mini_batch_size=self.mini_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            ppo_epochs=self.ppo_epochs,
            learning_rate=self.learning_rate,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            lora_target_modules=[m.strip() for m in self.lora_target_modules.split(",")],
            eval_every=0,
            save_every=0,
            tensorboard=False,
            progress_bar=False,
            **changes,
        )


#: ``--short``: the full arm only, meant to finish within 20 minutes on 2 cores (10 steps at
#: the measured ~80 s a step plus two evaluations; not yet timed as a whole).
SHORT = Settings(steps=10)

#: The settings that decide the base policy's held-out answers (greedy, same prompts).
BASE_KEYS = ("max_new_tokens", "eval_size", "seed")


def split_held_out(
    examples: Sequence[Example], size: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)``: ``size`` rows held out, half of each query type (seeded)."""
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for k, qtype in enumerate(QTYPES):
        pool = [i for i, e in enumerate(examples) if e.qtype == qtype]
        want = size // 2 + (size % 2 if k == 0 else 0)
        if want > len(pool):
            raise ValueError(f"only {len(pool)} {qtype} rows for {want} held-out ones")
        held.update(int(i) for i in rng.choice(pool, size=want, replace=False))
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]


class RecordingReward:
    """A reward function that keeps what it scored, step by step (for the judge curve)."""

    def __init__(self, fn: HTTPReward) -> None:
        self.fn = fn
        self.calls: list[dict[str, list[Any]]] = []

    def __call__(
        self,
        queries: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None],
        qtypes: Sequence[str | None],
    ) -> Scores:
        scores = self.fn(queries, responses, references, qtypes)
        self.calls.append(
            {
                "query": list(queries),
                "response": list(scores.scored if scores.scored is not None else responses),
                "reference": list(references),
                "qtype": list(qtypes),
                "reward": list(scores.rewards),
            }
        )
        return scores

    def stop_strings(self) -> list[str] | None:
        return self.fn.stop_strings()

    def close(self) -> None:
        self.fn.close()


def judge_scores(
    judge: Judge,
    queries: Sequence[str],
    responses: Sequence[str],
    references: Sequence[str | None],
    qtypes: Sequence[str | None],
) -> np.ndarray:
    """The judge per answer: similarity to the reference (CONSTRAINED) or to the query."""
    anchors = [
        ref if qt == "CONSTRAINED" and ref else alpaca_query(q)
        for q, ref, qt in zip(queries, references, qtypes)
    ]
    return judge.similarity(anchors, list(responses))


def evaluate(
    trainer: Any,
    examples: Sequence[Example],
    client: Client,
    judge: Judge,
    own_options: dict[str, Any],
) -> list[dict[str, Any]]:
    """Greedy answers of the current policy to ``examples``, each with every figure (the
    arm's own reward read on the answer as cut, as for the base answers)."""
    samples = trainer.sample(list(examples), do_sample=False)
    queries = [e.input for e in examples]
    references = [e.output for e in examples]
    qtypes = [e.qtype for e in examples]
    full = client.reward(
        query=queries,
        response=samples.texts,
        reference=references,
        qtype=qtypes,
        options={"query_format": "alpaca"},
    )
    cut = full.cut
    scored = cut.scored(samples.texts) if cut is not None else list(samples.texts)
    stop_end = cut.stop_end if cut is not None else [len(t) for t in samples.texts]
    judged = judge_scores(judge, queries, scored, references, qtypes)
    max_new = trainer.cfg.max_new_tokens
    end_ids = set(trainer.end_ids)
    rows = []
    for i, e in enumerate(examples):
        tokens = samples.responses[i]
        ended = bool(tokens) and tokens[-1] in end_ids
        stopped = stop_end[i] < len(samples.texts[i])
        rows.append(
            {
                "index": i,
                "qtype": e.qtype,
                "prompt": e.input,
                "reference": e.output,
                "response": scored[i],
                "reward": float(full.rewards[i]),
                "judge": float(judged[i]),
                "words": len(wordpunct_tokenize(scored[i])),
                "policy_tokens": len(tokens),
                "repetition": repeated_trigram_share(scored[i]),
                "copies_query": bool(copies_query(alpaca_query(e.input), scored[i])),
                "empty": not scored[i].strip(),
                "truncated": not ended and not stopped and len(tokens) >= max_new,
            }
        )
    return own_rewards(client, rows, own_options)


#: Per-answer figures summarised start vs end (booleans become rates).
FIGURES = (
    "reward",
    "own_reward",
    "judge",
    "words",
    "repetition",
    "copies_query",
    "empty",
    "truncated",
)
_CI_FIGURES = ("reward", "judge", "own_reward")


def compare(
    start: Sequence[dict[str, Any]], end: Sequence[dict[str, Any]], seed: int = 0
) -> dict[str, Any]:
    """Start vs end means of every figure, and paired 95% bootstrap CIs of the differences.

    The rows of ``start`` and ``end`` answer the same prompts in the same order.
    """
    if [r["prompt"] for r in start] != [r["prompt"] for r in end]:
        raise ValueError("start and end rows answer different prompts")
    out: dict[str, Any] = {"n": len(start)}
    for name in FIGURES:
        a = np.array([float(r[name]) for r in start])
        b = np.array([float(r[name]) for r in end])
        out[f"{name}_start"] = float(a.mean()) if a.size else float("nan")
        out[f"{name}_end"] = float(b.mean()) if b.size else float("nan")
        if name in _CI_FIGURES:
            out[f"{name}_delta_ci"] = list(bootstrap_mean_ci(b - a, seed=seed))
    return out


def summarise(
    start: Sequence[dict[str, Any]], end: Sequence[dict[str, Any]], seed: int = 0
) -> dict[str, Any]:
    """``compare`` over all prompts, and for each query type apart under ``by_qtype``."""
    summary = compare(start, end, seed)
    summary["by_qtype"] = {
        qt: compare(
            [r for r in start if r["qtype"] == qt], [r for r in end if r["qtype"] == qt], seed
        )
        for qt in QTYPES
    }
    return summary


def step_judge(judge: Judge, calls: Sequence[dict[str, list[Any]]]) -> list[dict[str, float]]:
    """The judge's mean over each training step's rollouts, overall and per query type."""
    out = []
    for call in calls:
        sims = judge_scores(
            judge, call["query"], call["response"], call["reference"], call["qtype"]
        )
        row = {"judge": float(sims.mean())}
        for qt in QTYPES:
            picked = [s for s, q in zip(sims, call["qtype"]) if q == qt]
            row[f"judge_{qt.lower()}"] = float(np.mean(picked)) if picked else float("nan")
        out.append(row)
    return out


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run_arm(
    name: str,
    settings: Settings,
    model: str | None,
    train_file: Path,
    held_out: Sequence[Example],
    url: str,
    judge: Judge,
    out: Path,
    base: list[dict[str, Any]] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Train one arm; ``(base rows, end rows, timings)`` (base evaluated here when None)."""
    from r3_trainer.trainer import PPOTrainer

    arm = ARMS[name]
    cfg = settings.ppo_config(
        dataset=str(train_file),
        reward_url=url,
        reward_options=dict(arm.options),
        output_dir=str(out / name),
        model=model,
    )
    recorder = RecordingReward(HTTPReward(url, options=cfg.service_options()))
    trainer = PPOTrainer(cfg, reward_fn=recorder)
    client = Client(base_url=url, timeout=300)
    timings: dict[str, Any] = {}
    try:
        if base is None:
            t0 = time.perf_counter()
            base = evaluate(trainer, held_out, client, judge, arm.options)
            timings["base_eval_seconds"] = time.perf_counter() - t0
            log.info("base policy evaluated in %.0f s", timings["base_eval_seconds"])
        t0 = time.perf_counter()
        trainer.train()
        timings["train_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        end = evaluate(trainer, held_out, client, judge, arm.options)
        timings["eval_seconds"] = time.perf_counter() - t0
        own_base = own_rewards(client, base, arm.options)
    finally:
        trainer.close()
        client.close()
    rows = read_metrics(out / name / "metrics.jsonl")
    for row, extra in zip(rows, step_judge(judge, recorder.calls)):
        row.update(extra)
    write_jsonl(out / name / "metrics.jsonl", rows)
    timings["s_per_step"] = float(np.mean([r["time_step_s"] for r in rows]))
    timings["load_avg_mean"] = float(np.mean([r.get("load_avg_1m") or 0.0 for r in rows]))
    return own_base, end, timings


def own_rewards(
    client: Client, rows: Sequence[dict[str, Any]], options: dict[str, Any]
) -> list[dict[str, Any]]:
    """``rows`` (answers already cut) with ``own_reward`` read again under ``options``."""
    result = client.reward(
        query=[r["prompt"] for r in rows],
        response=[r["response"] for r in rows],
        reference=[r["reference"] for r in rows],
        qtype=[r["qtype"] for r in rows],
        options={**options, "query_format": "alpaca"},
    )
    return [{**r, "own_reward": float(x)} for r, x in zip(rows, result.rewards)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for every output.")
    parser.add_argument("--short", action="store_true", help="Full R^3 only, <= 20 min.")
    parser.add_argument("--arms", default=None, help=f"Comma-separated of {', '.join(ARMS)}.")
    parser.add_argument("--reward-url", default=None, help="A running service; else start one.")
    parser.add_argument("--judge-model", default=None, help="Judge encoder folder.")
    parser.add_argument("--model", default=None, help="Policy; unset = the bundled SmolLM2.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; unset = torch's default. 1 when other jobs share the cores: "
        "a thread that waits for a busy core stalls every parallel region (generation ran "
        "5-7x slower on 2 threads than on 1 beside other jobs).",
    )
    parser.add_argument("--dataset", default=str(ALPACAFARM_QTYPE), help="Prompt rows.")
    for f in dataclasses.fields(Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "learning.log")],
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base_settings = SHORT if args.short else Settings()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(args, f.name) is not None
    }
    settings = dataclasses.replace(base_settings, **changes)
    arms = ["full"] if args.short and args.arms is None else (args.arms or ",".join(ARMS))
    names = arms if isinstance(arms, list) else [a.strip() for a in arms.split(",") if a.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        parser.error(f"unknown arms: {', '.join(unknown)}")

    examples = load_examples(args.dataset)
    train, held_out = split_held_out(examples, settings.eval_size, settings.seed)
    train_file = args.out / "train.json"
    train_file.write_text(
        json.dumps([dataclasses.asdict(e) for e in train], ensure_ascii=False), encoding="utf-8"
    )
    judge = Judge(args.judge_model)

    claims = [claim_arm(args.out, name) for name in names]
    try:
        with service(args.reward_url, log=args.out / "server.log") as url:
            run_arms(args, names, settings, train, held_out, url, judge)
    finally:
        for path in claims:
            path.unlink(missing_ok=True)
    return 0


def claim_arm(out: Path, name: str) -> Path:
    """Mark arm ``name`` in ``out`` as taken by this process; refuse one a live process holds.

    Two processes training the same arm into one folder would overwrite each other's
    per-step metrics.
    """
    path = out / f".{name}.running"
    try:
        holder = int(path.read_text(encoding="utf-8") or 0)
    except (FileNotFoundError, ValueError):
        holder = 0
    if holder and holder != os.getpid():
        try:
            os.kill(holder, 0)
        except ProcessLookupError:
            pass  # a stale claim: that process is gone
        else:
            raise SystemExit(f"arm {name} is being trained into {out} by process {holder}")
    path.write_text(str(os.getpid()), encoding="utf-8")
    return path


def run_arms(
    args: argparse.Namespace,
    names: Sequence[str],
    settings: Settings,
    train: Sequence[Example],
    held_out: Sequence[Example],
    url: str,
    judge: Judge,
) -> None:
    """Run ``names`` one after the other against ``url``, writing the outputs after each."""
    train_file = args.out / "train.json"
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "settings": dataclasses.asdict(settings),
        "arms": {},
        "held_out": {qt: sum(e.qtype == qt for e in held_out) for qt in QTYPES},
        "train_rows": len(train),
        "judge": judge.name,
        "machine": {
            "cpus": _cpus(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": _torch_threads(),
        },
    }
    base = _saved_base(args.out, held_out, summary["settings"])
    for name in names:
        t0 = time.perf_counter()
        log.info("arm %s (%s): %s", name, ARMS[name].title, ARMS[name].options)
        base, end, timings = run_arm(
            name, settings, args.model, train_file, held_out, url, judge, args.out, base
        )
        if not (args.out / "eval_base.jsonl").exists():
            write_jsonl(args.out / "eval_base.jsonl", base)
        write_jsonl(args.out / f"eval_{name}.jsonl", end)
        figures = summarise(base, end, settings.seed)
        summary["arms"][name] = {
            "title": ARMS[name].title,
            "options": ARMS[name].options,
            "paper": ARMS[name].paper,
            **figures,
            "steps": settings.steps,
            "seconds": time.perf_counter() - t0,
            **timings,
        }
        summary["seconds"] = time.perf_counter() - started
        _write(args.out, summary)
        log.info(
            "arm %s: reward %.3f -> %.3f %s, judge %.3f -> %.3f %s",
            name,
            figures["reward_start"],
            figures["reward_end"],
            _ci(figures["reward_delta_ci"]),
            figures["judge_start"],
            figures["judge_end"],
            _ci(figures["judge_delta_ci"]),
        )


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _saved_base(
    out: Path, held_out: Sequence[Example], settings: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """The base policy's answers saved in ``out`` by a run with the same settings, if any.

    Greedy decoding of the same prompts by the same policy gives the same answers (only
    ``BASE_KEYS`` of the settings matter), so an arm run later, in a parallel process or with
    other training settings does not evaluate the base policy again.
    """
    saved = out / "summary.json"
    rows = _read_jsonl(out / "eval_base.jsonl")
    if not rows or not saved.is_file():
        return None
    before = json.loads(saved.read_text(encoding="utf-8")).get("settings") or {}
    if any(before.get(k) != settings.get(k) for k in BASE_KEYS):
        return None
    if [r["prompt"] for r in rows] != [e.input for e in held_out]:
        return None
    log.info("base policy answers read from %s", out / "eval_base.jsonl")
    return rows


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _ci(ci: Sequence[float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _write(out: Path, summary: dict[str, Any]) -> None:
    """summary.json, results.md and curves.png from what has finished so far.

    Arms that another run with the same settings wrote into ``out`` meanwhile are kept, so
    arms can run as separate processes (one per core) into one folder.
    """
    path = out / "summary.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before.get("settings") == summary["settings"]:
            for name, arm in before.get("arms", {}).items():
                summary["arms"].setdefault(name, arm)
    summary["arms"] = {n: summary["arms"][n] for n in ARMS if n in summary["arms"]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    (out / "results.md").write_text(results_markdown(summary, out), encoding="utf-8")
    plot_curves(out, list(summary["arms"]), out / "curves.png")


def results_markdown(summary: dict[str, Any], out: Path) -> str:
    """The ablation table (start and end of every arm), the settings and sample answers."""
    s = summary["settings"]
    lines = [
        "# Does it learn? PPO with R^3 over HTTP, held-out evaluation",
        "",
        f"Policy SmolLM2-135M-Instruct (LoRA), {s['steps']} steps x {s['batch_size']} rollouts "
        f"({s.get('samples_per_prompt', 1)} per prompt, advantages: "
        f"{s.get('advantage_estimator', 'gae')}), "
        f"up to {s['max_new_tokens']} new tokens, lr {s['learning_rate']:g}, "
        f"LoRA on {s.get('lora_target_modules', 'q_proj,v_proj')}, "
        f"{s['ppo_epochs']} PPO epochs, mini-batch {s['mini_batch_size']} x "
        f"{s['gradient_accumulation_steps']} accumulation, seed {s['seed']}. Held out: "
        f"{summary['held_out']['OPENENDED']} OPENENDED + {summary['held_out']['CONSTRAINED']} "
        f"CONSTRAINED prompts, greedy. Judge: {summary['judge']} (cosine; to the query for "
        "OPENENDED, to the reference for CONSTRAINED). Brackets: 95% paired bootstrap CI of "
        "end - start over prompts.",
        "",
        "| policy | R^3 all | R^3 OPENENDED | R^3 CONSTRAINED | judge all | judge OE | "
        "judge CON | words | repeated trigrams | copies query | empty | cut at max |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    arms = summary["arms"]
    if arms:
        first = next(iter(arms.values()))
        lines.append(_table_row("SFT (start)", first, "start"))
    for name, a in arms.items():
        lines.append(_table_row(f"{a['title']} (`{name}`)", a, "end"))
    lines += ["", "| arm | s/step | train s | steps | load avg | paper's finding |"]
    lines.append("|---|---|---|---|---|---|")
    for name, a in arms.items():
        lines.append(
            f"| `{name}` | {a['s_per_step']:.1f} | {a['train_seconds']:.0f} | {a['steps']} | "
            f"{a['load_avg_mean']:.1f} | {a['paper']} |"
        )
    lines += _samples(out, list(arms))
    return "\n".join(lines) + "\n"


def _table_row(label: str, a: dict[str, Any], when: str) -> str:
    by = a["by_qtype"]

    def cell(d: dict[str, Any], name: str, digits: int = 3) -> str:
        text = f"{d[f'{name}_{when}']:.{digits}f}"
        if when == "end" and f"{name}_delta_ci" in d:
            text += f" {_ci(d[f'{name}_delta_ci'])}"
        return text

    pct = {n: f"{100 * a[f'{n}_{when}']:.0f}%" for n in ("copies_query", "empty", "truncated")}
    return (
        f"| {label} | {cell(a, 'reward')} | {cell(by['OPENENDED'], 'reward')} | "
        f"{cell(by['CONSTRAINED'], 'reward')} | {cell(a, 'judge')} | "
        f"{cell(by['OPENENDED'], 'judge')} | {cell(by['CONSTRAINED'], 'judge')} | "
        f"{a[f'words_{when}']:.1f} | {a[f'repetition_{when}']:.3f} | {pct['copies_query']} | "
        f"{pct['empty']} | {pct['truncated']} |"
    )


def _samples(out: Path, names: list[str], per_type: int = 2) -> list[str]:
    """Three sample answers (OPENENDED, CONSTRAINED, OPENENDED) before and after each arm."""
    base = _read_jsonl(out / "eval_base.jsonl")
    if not base:
        return []
    picks = [r["index"] for r in base if r["qtype"] == "OPENENDED"][:per_type]
    picks.insert(1, next(r["index"] for r in base if r["qtype"] == "CONSTRAINED"))
    lines = ["", "## Sample answers (the same held-out prompts; the first three of each type)"]
    for i in picks[:3]:
        row = base[i]
        lines += ["", f"**{row['qtype']}**: {_quote(row['prompt'])}", ""]
        lines.append(f"- start (R^3 {row['reward']:.2f}): {_quote(row['response'])}")
        for name in names:
            end = _read_jsonl(out / f"eval_{name}.jsonl")
            if end:
                r = end[i]
                lines.append(f"- `{name}` (R^3 {r['reward']:.2f}): {_quote(r['response'])}")
    return lines


def _quote(text: str, limit: int = 300) -> str:
    one = " ".join(text.split())
    return "`" + (one[:limit] + " ..." if len(one) > limit else one).replace("`", "'") + "`"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_curves(out: Path, names: Sequence[str], path: Path, window: int = 5) -> None:
    """One PNG: the arms' per-step training reward, KL, length and judge, overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("reward_mean", "training reward (the arm's own)"),
        ("kl", "KL to the start policy (nats)"),
        ("response_length_mean", "response length (tokens)"),
        ("judge", "judge on training rollouts"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (key, title) in zip(axes.flat, panels):
        for name in names:
            rows = read_metrics(out / name / "metrics.jsonl")
            x = [r["step"] for r in rows if r.get(key) is not None]
            y = np.array([r[key] for r in rows if r.get(key) is not None], dtype=float)
            if y.size == 0:
                continue
            smooth = (
                np.convolve(y, np.ones(window) / window, mode="valid") if y.size >= window else y
            )
            (line,) = ax.plot(x, y, alpha=0.25)
            ax.plot(x[len(x) - len(smooth) :], smooth, color=line.get_color(), label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(f"R^3 PPO arms, {window}-step moving averages (faint: per step)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
