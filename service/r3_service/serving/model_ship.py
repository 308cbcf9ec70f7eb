"""Ship one exported model folder to every node through Ray's object store.

The app builder resolves the folder once (exporting the embedded default on first use)
on the node that builds the application. A ``ModelStore`` deployment pinned to that node
reads the files into the object store; each replica asks it for the manifest and, unless
its node already holds a copy, pulls the files into ``<cache_dir>/ray-models/<digest>/``.
Replicas on one node share that copy; a folder is never exported per replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Written last: a folder without it is an interrupted copy.
COMPLETE_MARK = ".r3-complete"


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative POSIX name, path) of every file under ``folder``, sorted."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE_MARK]
    return sorted((p.relative_to(folder).as_posix(), p) for p in files)


def digest_of(named: list[tuple[str, bytes]]) -> str:
    """Content digest of a folder given as (name, bytes) pairs."""
    h = hashlib.sha256()
    for name, data in named:
        h.update(name.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()[:20]


def write_copy(root: Path, digest: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` as ``root/digest`` atomically; a concurrent writer's copy is kept."""
    target = root / digest
    if (target / COMPLETE_MARK).is_file():
        return target
    tmp = root / f".{digest}.{uuid.uuid4().hex}"
    for name, data in files.items():
        path = tmp / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise ValueError(f"unsafe file name in model manifest: {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (tmp / COMPLETE_MARK).write_text(digest)
    try:
        os.rename(tmp, target)
    except OSError:  # another replica on this node finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / COMPLETE_MARK).is_file():
            raise
    return target


class ModelStore:
    """Holds one folder's files in the object store; one replica, no CPU."""

    def __init__(self, folder: str) -> None:
        import ray

        named = [(name, path.read_bytes()) for name, path in folder_files(Path(folder))]
        if not named:
            raise FileNotFoundError(f"model folder {folder} is empty")
        self.digest = digest_of(named)
        self.size = sum(len(data) for _, data in named)
        self._refs = {name: ray.put(data) for name, data in named}
        logger.info("model store: %s (%d files, %d bytes)", folder, len(named), self.size)

    def manifest(self) -> tuple[str, dict[str, Any]]:
        """(digest, {file name: object ref})."""
        return self.digest, self._refs


async def fetch_model(store: Any, cache_dir: Path) -> Path:
    """This node's copy of the store's folder (pulled once per node)."""
    digest, refs = await store.manifest.remote()
    root = cache_dir / "ray-models"
    target = root / digest
    if (target / COMPLETE_MARK).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    names = list(refs)
    datas = await asyncio.gather(*(_get(refs[n]) for n in names))
    folder = await asyncio.to_thread(write_copy, root, digest, dict(zip(names, datas)))
    logger.info("model %s copied to %s", digest, folder)
    return folder


async def _get(ref: Any) -> bytes:
    data = await ref
    return data if isinstance(data, bytes) else bytes(data)
