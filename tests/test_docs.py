"""Every shell and Python block of the docs runs as written, against a live server.

Which files: README.md, every ``docs/**/*.md``, ``clients/python/README.md`` and
``examples/**/*.md`` (a new page is picked up without editing this test).

Which blocks: fences tagged ``bash``, ``sh``, ``shell`` or ``python`` run; any other fence
(``json``, ``yaml``, ``text``, none) is an example of data or output and is not run. A block
that must not run carries a marker on the line right before its fence:

    <!-- doctest: skip REASON -->    not run (needs a GPU, the Hugging Face hub, hours...);
                                     the reason is required
    <!-- doctest: server -->         a bash block that starts the service and does not return:
                                     it runs in the background and the next blocks run once
                                     /readyz answers

How they run: the blocks of one file run in order, each in a fresh ``bash`` (or ``python``)
process, in a copy of the repository (tracked and untracked, not ignored files) whose ``.venv``
is the environment running the tests, with ``R3_SKIP_INSTALL=1`` (that environment is already
installed) and ``HF_HUB_OFFLINE=1``. Port 8000, which the docs use, is replaced by a free port in
each block (``localhost:8000``, ``127.0.0.1:8000``, ``--port 8000``); ``R3_PORT`` and
``R3_BASE_URL`` point there too. A file without a server block gets a server on the
embedded default. A block passes when it exits with 0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
MARKER = re.compile(r"<!--\s*doctest:\s*(skip|server)\b\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    marker: str | None
    reason: str


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "clients/python/README.md"]
    files += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "examples").rglob("*.md"))
    return [f for f in files if f.is_file()]


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with the marker line above each."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(1).lower()
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        above = lines[start - 1] if start > 0 else ""
        marker = MARKER.search(above)
        out.append(
            Block(
                path=path,
                line=start + 1,
                lang=lang,
                code="\n".join(body) + "\n",
                marker=marker.group(1) if marker else None,
                reason=marker.group(2) if marker else "",
            )
        )
        i += 1
    return out


def runnable(path: Path) -> list[Block]:
    return [b for b in blocks_of(path) if b.lang in RUN_LANGS and b.marker != "skip"]


def pages_with_blocks() -> list[Path]:
    return [p for p in doc_files() if runnable(p)]


def test_marker_convention_is_followed() -> None:
    """Skips say why; server markers sit on shell blocks; unknown doctest comments fail."""
    for path in doc_files():
        text = path.read_text()
        for comment in re.findall(r"<!--\s*doctest:.*?-->", text):
            assert MARKER.search(comment), f"{path}: unknown marker {comment}"
        for block in blocks_of(path):
            where = f"{path.relative_to(ROOT)}:{block.line}"
            if block.marker == "skip":
                assert block.reason, f"{where}: a skip marker needs a reason"
            if block.marker == "server":
                assert RUN_LANGS.get(block.lang) == "bash", f"{where}: server blocks are bash"


def _copy_repo(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel = raw.decode()
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".venv").symlink_to(Path(sys.prefix))


def _port_free() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DocRunner:
    """Runs one file's blocks in a copy of the repository."""

    def __init__(self, workdir: Path, cache: Path) -> None:
        self.workdir = workdir
        self.port = _port_free()
        self.url = f"http://127.0.0.1:{self.port}"
        bin_dir = str(Path(sys.prefix) / "bin")
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "R3_SKIP_INSTALL": "1",
            "R3_BASE_URL": self.url,
            "R3_PORT": str(self.port),  # a server started without --port
            "R3_CACHE_DIR": str(cache),
            "R3_LOG_LEVEL": "warning",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        self.servers: list[subprocess.Popen[bytes]] = []

    def code(self, text: str) -> str:
        """``text`` with the docs' port 8000 replaced by this runner's port."""
        return re.sub(r"(localhost|127\.0\.0\.1):8000|--port 8000", self._port, text)

    def _port(self, match: re.Match[str]) -> str:
        return match.group(0).replace("8000", str(self.port))

    def start_server(self, code: str, log: Path) -> None:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", self.code(code)],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.servers.append(proc)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"server block exited: {log.read_text()[-3000:]}"
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server block not ready: {log.read_text()[-3000:]}")

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        command = ["bash", "-euo", "pipefail", "-c"] if block.lang != "python" else ["python", "-c"]
        return subprocess.run(
            [*command, self.code(block.code)],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def stop(self) -> None:
        import signal

        for proc in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@pytest.fixture
def runner(tmp_path: Path, minilm_dir: Path) -> Iterator[DocRunner]:
    workdir = tmp_path / "repo"
    workdir.mkdir()
    _copy_repo(workdir)
    cache = tmp_path / "cache"
    # The embedded default, already exported by the session fixture (the same export).
    target = cache / "models"
    target.mkdir(parents=True)
    from r3_service.models import default_export_dir

    shutil.copytree(minilm_dir, default_export_dir(cache))
    doc_runner = DocRunner(workdir, cache)
    yield doc_runner
    doc_runner.stop()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("path", pages_with_blocks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_blocks_run_as_written(path: Path, runner: DocRunner, tmp_path: Path) -> None:
    blocks = runnable(path)
    if not any(b.marker == "server" for b in blocks):
        runner.start_server("r3-serve --port 8000", tmp_path / "server.log")
    failures = []
    for n, block in enumerate(blocks):
        where = f"{path.relative_to(ROOT)}:{block.line}"
        if block.marker == "server":
            runner.start_server(block.code, tmp_path / f"server{n}.log")
            continue
        result = runner.run(block)
        if result.returncode != 0:
            failures.append(f"{where} exited {result.returncode}:\n{result.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)
