"""Console scripts: ``r3-serve`` and ``r3-export``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path


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
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Fail fast on a bad folder, and export the default before the port opens.
    settings = settings.model_copy(
        update={"model": resolve_model_dir(settings.model, settings.cache_dir)}
    )
    serve(settings)  # uvicorn with connection limits and timeouts (server.py)


def export_main(argv: Sequence[str] | None = None) -> None:
    """Export a Hugging Face encoder (hub id or folder) to an ONNX folder the service serves."""
    from r3_service.encoder.export import export_encoder
    from r3_service.encoder.profile import PRESETS

    parser = argparse.ArgumentParser(prog="r3-export", description=export_main.__doc__)
    parser.add_argument("model", help="hub id (e.g. facebook/contriever) or local folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "int8"], default="fp32")
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
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    profile = export_encoder(
        args.model,
        args.out,
        dtype=args.dtype,
        profile=args.profile,
        optimize={"auto": None, "always": True, "never": False}[args.optimize],
        max_length=args.max_length,
    )
    logging.getLogger("r3-export").info("wrote %s: %s", args.out, profile.to_json())
