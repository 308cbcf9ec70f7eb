"""deploy/docker/cpu-torch.sh, every branch: which torch the CPU trainer image gets.

Run against a pip that sees only a local folder (no index, no pip configuration) holding a
small stand-in ``torch`` wheel, whose metadata names nvidia-* packages (the CUDA build that
PyPI has for Linux) or not (a CPU build), and a PyTorch CPU index that answers (a local HTTP
server) or does not (a closed port).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "docker" / "cpu-torch.sh"
VERSION = "2.13.0"


def torch_metadata(cuda: bool) -> str:
    meta = f"Metadata-Version: 2.1\nName: torch\nVersion: {VERSION}\nRequires-Dist: filelock\n"
    if cuda:
        meta += "Requires-Dist: nvidia-cublas-cu12==12.8.4.1; platform_system == 'Linux'\n"
    return meta


def fake_torch(folder: Path, cuda: bool) -> Path:
    """A wheel named and described like torch ``VERSION`` (no code in it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"torch-{VERSION}-py3-none-any.whl"
    meta = torch_metadata(cuda)
    info = f"torch-{VERSION}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("torch/__init__.py", "")
        z.writestr(f"{info}/METADATA", meta)
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    return path


def serve(folder: Path, seen: list[str]) -> http.server.ThreadingHTTPServer:
    """An HTTP server of ``folder`` that records every path asked for in ``seen``."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object) -> None:
            super().__init__(*args, directory=str(folder))  # type: ignore[arg-type]

        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def answering_index(tmp_path: Path) -> Iterator[str]:
    """A local stand-in for PyTorch's CPU index: /torch/ answers 200."""
    (tmp_path / "index" / "torch").mkdir(parents=True)
    (tmp_path / "index" / "torch" / "index.html").write_text("<html></html>")
    server = serve(tmp_path / "index", [])
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def run(
    checkout: Path, links: Path | None, cpu_index: str, index_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """cpu-torch.sh in ``checkout``, with pip seeing only ``links`` (a folder) or only
    ``index_url`` (a simple index)."""
    (checkout / "deploy" / "docker" / "wheels").mkdir(parents=True, exist_ok=True)
    source = {"PIP_INDEX_URL": index_url} if index_url else {"PIP_NO_INDEX": "1"}
    if links is not None:
        source["PIP_FIND_LINKS"] = str(links)
    host = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # this host's
    env = {
        **host,
        "PIP": f"{sys.executable} -m pip --disable-pip-version-check",
        **source,
        "PYTHON": sys.executable,
        "PIP_CONFIG_FILE": os.devnull,  # nor its pip configuration (they add their own index)
        "TORCH_VERSION": VERSION,
        "R3_TORCH_CPU_INDEX": cpu_index,
    }
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=checkout, env=env, capture_output=True, text=True, timeout=120
    )


def wheelhouse(checkout: Path) -> list[str]:
    return sorted(p.name for p in (checkout / "deploy" / "docker" / "wheels").glob("*.whl"))


def test_a_cpu_wheel_from_the_index_goes_to_the_wheelhouse(tmp_path: Path) -> None:
    fake_torch(tmp_path / "links", cuda=False)
    done = run(tmp_path / "repo", tmp_path / "links", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wheel deploy/docker/wheels/torch-{VERSION}-py3-none-any.whl"
    assert wheelhouse(tmp_path / "repo") == [f"torch-{VERSION}-py3-none-any.whl"]


def test_the_cuda_build_is_never_taken_the_cpu_index_is_used_when_it_answers(
    tmp_path: Path, answering_index: str
) -> None:
    fake_torch(tmp_path / "links", cuda=True)
    done = run(tmp_path / "repo", tmp_path / "links", answering_index)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"index {answering_index}"
    assert wheelhouse(tmp_path / "repo") == []


def test_with_only_the_cuda_build_and_no_cpu_index_it_stops_and_says_what_to_provide(
    tmp_path: Path,
) -> None:
    fake_torch(tmp_path / "links", cuda=True)
    done = run(tmp_path / "repo", tmp_path / "links", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "no CPU build of torch 2.13.0" in done.stderr
    assert "deploy/docker/wheels/" in done.stderr and "TRAINER_TORCH_INDEX_URL" in done.stderr
    assert wheelhouse(tmp_path / "repo") == []


def test_a_wheel_already_in_the_wheelhouse_is_used_without_asking_pip(tmp_path: Path) -> None:
    fake_torch(tmp_path / "repo" / "deploy" / "docker" / "wheels", cuda=False)
    done = run(tmp_path / "repo", tmp_path / "nowhere", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wheel deploy/docker/wheels/torch-{VERSION}-py3-none-any.whl"
    assert "already" in done.stderr


def test_the_cuda_build_on_an_index_is_judged_by_its_metadata_and_never_downloaded(
    tmp_path: Path,
) -> None:
    """PyPI serves each wheel's metadata apart (PEP 658): the script reads that, and does
    not fetch the CUDA wheel (502 MB for torch 2.13.0) only to turn it down."""
    root = tmp_path / "pypi"
    wheel = fake_torch(root / "files", cuda=True)
    meta = torch_metadata(cuda=True).encode()
    (root / "files" / f"{wheel.name}.metadata").write_bytes(meta)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    meta_digest = hashlib.sha256(meta).hexdigest()
    (root / "simple" / "torch").mkdir(parents=True)
    (root / "simple" / "torch" / "index.html").write_text(
        f'<html><body><a href="/files/{wheel.name}#sha256={digest}" '
        f'data-dist-info-metadata="sha256={meta_digest}" '
        f'data-core-metadata="sha256={meta_digest}">{wheel.name}</a></body></html>'
    )
    seen: list[str] = []
    server = serve(root, seen)
    try:
        index = f"http://127.0.0.1:{server.server_address[1]}/simple"
        done = run(tmp_path / "repo", None, f"http://127.0.0.1:{free_port()}", index)
    finally:
        server.shutdown()
    assert done.returncode == 1, done.stderr
    assert "no CPU build of torch 2.13.0" in done.stderr
    assert f"/files/{wheel.name}.metadata" in seen  # it asked the index (the test is live)
    assert f"/files/{wheel.name}" not in seen
    assert wheelhouse(tmp_path / "repo") == []
