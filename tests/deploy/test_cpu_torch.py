"""deploy/docker/cpu-torch.sh, every branch: which torch the CPU trainer image gets.

Run against a pip that sees only a local folder (no index, no pip configuration) holding a
small stand-in ``torch`` wheel, whose metadata names nvidia-* packages (the CUDA build that
PyPI has for Linux) or not (a CPU build), and a PyTorch CPU index that answers (a local HTTP
server) or does not (a closed port).
"""

from __future__ import annotations

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


def fake_torch(folder: Path, cuda: bool) -> Path:
    """A wheel named and described like torch ``VERSION`` (no code in it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"torch-{VERSION}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: torch\nVersion: {VERSION}\nRequires-Dist: filelock\n"
    if cuda:
        meta += "Requires-Dist: nvidia-cublas-cu12==12.8.4.1; platform_system == 'Linux'\n"
    info = f"torch-{VERSION}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("torch/__init__.py", "")
        z.writestr(f"{info}/METADATA", meta)
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def answering_index(tmp_path: Path) -> Iterator[str]:
    """A local stand-in for PyTorch's CPU index: /torch/ answers 200."""
    (tmp_path / "index" / "torch").mkdir(parents=True)
    (tmp_path / "index" / "torch" / "index.html").write_text("<html></html>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path / "index")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def run(checkout: Path, links: Path, cpu_index: str) -> subprocess.CompletedProcess[str]:
    (checkout / "deploy" / "docker" / "wheels").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PIP": f"{sys.executable} -m pip --disable-pip-version-check",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(links),
        "PYTHON": sys.executable,
        "PIP_CONFIG_FILE": os.devnull,  # this host's pip configuration would add its own index
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
