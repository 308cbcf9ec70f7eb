"""Console scripts: ``r3-serve`` and ``r3-export``."""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from r3_service.config import Settings
    from r3_service.encoder.profile import EncoderProfile


def serve_main(argv: Sequence[str] | None = None) -> None:
    """Serve R^3 over HTTP (the embedded default encoder unless --model is given)."""
    from r3_service.config import Settings
    from r3_service.models import resolve_model_dir
    from r3_service.server import serve

    parser = argparse.ArgumentParser(prog="r3-serve", description=serve_main.__doc__)
    parser.add_argument("--model", type=Path, help="exported model folder (see r3-export)")
    parser.add_argument("--host", help="address to bind (R3_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (R3_PORT)")
    parser.add_argument("--provider", choices=["auto", "cpu", "cuda"], help="(R3_PROVIDER)")
    parser.add_argument(
        "--backend", choices=["onnxruntime", "openvino"], help="inference engine (R3_BACKEND)"
    )
    parser.add_argument(
        "--precision",
        dest="inference_precision",
        choices=["fp32", "bf16"],
        help="fp32 (default) keeps rewards exact; bf16 needs --backend openvino and a CPU with "
        "bf16 units (R3_INFERENCE_PRECISION)",
    )
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    check_backend(settings)
    # Fail fast on a bad folder, and export the default before the port opens.
    settings = settings.model_copy(
        update={"model": resolve_model_dir(settings.model, settings.cache_dir)}
    )
    serve(settings)  # uvicorn with connection limits and timeouts (server.py)


#: Measured in issue 26 (OpenVINO 2026.4, Intel Xeon with AMX, 2 cores, all-MiniLM-L6-v2).
#: ``python bench/int8_error.py --variant openvino-bf16`` measures rewards on such a CPU.
BF16_MEASURED = (
    "|relevance(bf16) - relevance(fp32)| max 0.0051, mean 0.0008, p99 0.0032 on 800 "
    "AlpacaFarm pairs (OpenVINO 2026.4, Intel Xeon with AMX)"
)
BF16_WARNING = "bf16 changes rewards slightly (%s); fp32, the default, keeps them exact"


def check_backend(settings: Settings) -> None:
    """Before the port opens: the backend is installed and runs the asked precision on this
    CPU (raises SystemExit with the reason); bf16 is logged as a change of rewards."""
    log = logging.getLogger("r3-serve")
    chosen = {
        (options["backend"], options["precision"])
        for options in (settings.encoder_options(), settings.encoder_options(classifier=True))
    }
    for backend, precision in sorted(chosen):
        if backend != "openvino":
            continue
        try:
            import openvino
        except ImportError:
            raise SystemExit(
                "R3_BACKEND=openvino needs the openvino package: pip install 'r3-reward[openvino]'"
            ) from None
        from r3_service.encoder.openvino import (
            PrecisionUnsupportedError,
            check_precision,
            cpu_capabilities,
        )

        try:
            check_precision(precision, cpu_capabilities(openvino.Core()))
        except PrecisionUnsupportedError as exc:
            raise SystemExit(str(exc)) from None
        if precision == "bf16":
            log.warning(BF16_WARNING, BF16_MEASURED)


#: Measured by ``python bench/int8_error.py`` (768 AlpacaFarm items, all-MiniLM-L6-v2).
INT8_MEASURED = (
    "|reward(int8) - reward(fp32)| max 0.43, mean 0.037 on 768 AlpacaFarm items; "
    "the query-type classifier stays fp32"
)
INT8_WARNING = "int8 changes rewards (%s); fp32, the default, keeps them exact"


def export_main(argv: Sequence[str] | None = None) -> None:
    """Export a Hugging Face encoder (hub id or folder) to an ONNX folder the service serves."""
    parser = _export_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("r3-export")
    if args.dtype == "int8":
        log.warning(INT8_WARNING, INT8_MEASURED)
    created = not args.out.exists()
    try:
        profile = _export(args)
    except BaseException:
        if created:  # never leave an empty or half-written folder behind
            shutil.rmtree(args.out, ignore_errors=True)
        raise
    log.info("wrote %s: %s", args.out, profile.to_json())


def _export(args: argparse.Namespace) -> EncoderProfile:
    from r3_service.encoder.export import export_encoder
    from r3_service.install import install_classifier
    from r3_service.models import bundled_model_dir, is_default_name

    options = {
        "dtype": args.dtype,
        "optimize": {"auto": None, "always": True, "never": False}[args.optimize],
        "max_length": args.max_length,
        "backend": args.backend,
    }
    if is_default_name(args.model):
        source, preset = str(bundled_model_dir()), args.profile or "minilm"
        options["local_files_only"] = True
    else:
        source, preset = args.model, args.profile
    profile = export_encoder(source, args.out, profile=preset, **options)
    if args.no_classifier:
        logging.getLogger("r3-export").warning(
            "--no-classifier: %s has no query-type classifier; untyped items will need one "
            "(r3-train-classifier --model %s)",
            args.out,
            args.out,
        )
    else:
        install_classifier(args.out, profile, data=args.classifier_data)
    return profile


def _export_parser() -> argparse.ArgumentParser:
    from r3_service.encoder.profile import PRESETS

    parser = argparse.ArgumentParser(prog="r3-export", description=export_main.__doc__)
    parser.add_argument(
        "model",
        help="hub id (e.g. facebook/contriever), local folder, or `default` "
        "(also all-MiniLM-L6-v2, sentence-transformers/all-MiniLM-L6-v2): the embedded encoder",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="fp32 (default) keeps rewards exact; fp16 is for GPUs; int8 changes rewards "
        f"({INT8_MEASURED.replace('%', '%%')})",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PRESETS),
        help="similarity and F range (default: guessed from the name, else contriever)",
    )
    parser.add_argument(
        "--optimize",
        choices=["auto", "always", "never"],
        default="auto",
        help="offline ORT graph fusion: auto = for fp16 only (on CPU, ORT's load-time "
        "optimisation of the plain graph measured as fast)",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "onnx", "torch"],
        default="auto",
        help="onnx: build the BERT graph from safetensors without torch; torch: optimum/torch "
        "(any architecture, hub ids; needs the export extra); auto: onnx for a local "
        "BERT folder, else torch",
    )
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--classifier-data",
        type=Path,
        help="labelled prompts (JSON list of {input, qtype}) to train the query-type head on "
        "(default: the shipped fine-tuned classifier for the embedded encoder, else a head "
        "trained on the packaged AlpacaFarm prompts)",
    )
    parser.add_argument(
        "--no-classifier",
        action="store_true",
        help="write no query-type classifier (untyped items then need one at serve time)",
    )
    return parser
