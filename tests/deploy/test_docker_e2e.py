"""End to end with a real Docker engine, as deploy/README.md says to ("From a fresh host"):
in a clean copy of the repository, run its commands as written (``setup-host.sh``, then
``docker compose up -d --build``, ``ps``, ``logs trainer``, ``down -v``); build the images as
shipped, run the reward image, stop it under load, and bring up the CPU compose stack until
the trainer has trained and Prometheus has scraped it.

Runs in CI (root, Debian, no container registry): ``setup-host.sh`` installs Docker and
Compose v2, makes a Debian base image, finds the host's CA bundle and CPU torch wheel, and
writes ``.env``; each documented command must exit 0. The only additions to what a user
types are the environment variables that keep the test's ports, image names and project
name apart. When Docker cannot be made to run, the tests fail; they never skip.

Set ``R3_DOCKER_FIGURES=path.json`` to keep the figures measured here (deploy/README.md).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shlex
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import ROOT, load_yaml
from docker_harness import DEFAULT_BASE_IMAGE, Docker, clean_copy, documented_commands, read_env
from tests_support import free_port, poll_until, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
logger = logging.getLogger("r3.tests.docker")

PROJECT = "r3e2e"
IMAGES = {
    "REWARD_IMAGE_CPU": "r3-e2e-reward:cpu",
    "TRAINER_IMAGE_CPU": "r3-e2e-trainer:cpu",
    "PROMETHEUS_IMAGE_DEBIAN": "r3-e2e-prometheus:debian",
}
#: The image's HEALTHCHECK runs every 10 s; a healthy status takes at least that long.
HEALTHY_WITHIN_S = 180


def _get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


# ---------------------------------------------------------------------------------------------
# Fixtures: the engine, the build inputs, the images


@pytest.fixture(scope="module")
def figures() -> Iterator[dict[str, Any]]:
    """Figures measured by these tests, logged and written to $R3_DOCKER_FIGURES if set."""
    out: dict[str, Any] = {}
    yield out
    load = os.getloadavg()[0]
    out["machine"] = f"{os.cpu_count()} CPUs, load average {load:.1f} at the end"
    logger.info("docker figures: %s", json.dumps(out, indent=2))
    target = os.environ.get("R3_DOCKER_FIGURES")
    if target:
        Path(target).write_text(json.dumps(out, indent=2) + "\n")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of the repository (tracked and untracked, not ignored files): a clone."""
    return clean_copy(tmp_path_factory.mktemp("checkout") / "r3")


@pytest.fixture(scope="module")
def fresh_host() -> list[str]:
    """deploy/README.md's "From a fresh host" commands, as written."""
    commands = documented_commands(ROOT / "deploy" / "README.md", "fresh-host")
    assert commands[0].startswith("sudo bash deploy/docker/setup-host.sh"), commands
    assert "docker compose up -d --build" in commands, commands
    return commands


def _as_typed(command: str) -> str:
    """The command as a user types it; ``sudo`` is dropped when the tests already run as root."""
    if os.geteuid() == 0 and command.startswith("sudo "):
        return command[len("sudo ") :]
    return command


@pytest.fixture(scope="module")
def docker(
    tmp_path_factory: pytest.TempPathFactory,
    checkout: Path,
    fresh_host: list[str],
    figures: dict[str, Any],
) -> Iterator[Docker]:
    """The engine, after the documented host set-up ran in the clean copy."""
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}
    # The path of a host that reaches only PyPI, whose torch is the CUDA build: Debian's own
    # CPU torch for the trainer. This host's pip index has a CPU wheel, which setup-host.sh
    # would take (cpu-torch.sh's branches: tests/deploy/test_cpu_torch.py).
    env["R3_SETUP_TRAINER_TORCH"] = "debian"
    run(["bash", "-c", _as_typed(fresh_host[0])], env=env, cwd=checkout, timeout=3600)
    figures["setup_host_s"] = round(time.monotonic() - started, 1)
    engine = Docker(tmp_path_factory.mktemp("docker"), cwd=checkout)
    figures["versions"] = engine.versions
    figures["builder"] = "Compose v2's own BuildKit client against the daemon's BuildKit"
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def compose_env(docker: Docker, checkout: Path, figures: dict[str, Any]) -> dict[str, str]:
    """What `docker compose` gets besides the copy's .env (written by setup-host.sh): only
    the test's own ports, image names and project name."""
    dotenv = read_env(checkout / ".env")
    files = dotenv["COMPOSE_FILE"].split(":")
    assert files[:2] == ["docker-compose.yml", "docker-compose.cpu.yml"], files
    assert files[-1] == "docker-compose.debian-torch.yml", files
    figures["trainer_base_image"] = "debootstrap trixie (deploy/docker/debian-base.sh)"
    figures["trainer_base_image_mb"] = round(docker.image_size_mb(dotenv["TRAINER_BASE_IMAGE"]))
    if "BASE_IMAGE" in dotenv:
        assert files[2:-1] == ["docker-compose.no-registry.yml"], files
        figures["base_image"] = "debootstrap bookworm (deploy/docker/debian-base.sh)"
        figures["base_image_mb"] = round(docker.image_size_mb(dotenv["BASE_IMAGE"]))
    else:
        figures["base_image"] = DEFAULT_BASE_IMAGE
    wheels = sorted((checkout / "deploy" / "docker" / "wheels").glob("torch-*.whl"))
    if wheels:
        assert dotenv.get("TRAINER_TORCH_INDEX_URL") == "", dotenv
        figures["torch_wheel"] = wheels[0].name
    return {
        **IMAGES,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "REWARD_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
        "GRAFANA_PORT": str(free_port()),
    }


@pytest.fixture(scope="module")
def images(docker: Docker, compose_env: dict[str, str], figures: dict[str, Any]) -> dict[str, str]:
    """The CPU stack's images, built by `docker compose build` from the files as shipped."""
    for service in ("reward", "trainer"):
        started = time.monotonic()
        docker(["compose", "build", "--progress", "plain", service], env=compose_env, timeout=1800)
        figures[f"{service}_build_s"] = round(time.monotonic() - started, 1)
    built = {
        "reward": compose_env["REWARD_IMAGE_CPU"],
        "trainer": compose_env["TRAINER_IMAGE_CPU"],
    }
    for service, image in built.items():
        figures[f"{service}_image_mb"] = round(docker.image_size_mb(image))
    # Debian's CPU build of torch, and no CUDA or nvidia-* package in the image.
    probe = (
        "import torch, importlib.metadata as m; "
        "print(torch.__version__, torch.version.cuda, "
        "sorted(d.metadata['Name'] for d in m.distributions() "
        "if d.metadata['Name'].startswith('nvidia')))"
    )
    torch = docker(
        ["run", "--rm", "--entrypoint", "python", built["trainer"], "-c", probe]
    ).stdout.strip()
    assert torch.endswith("+debian None []"), torch
    figures["trainer_torch"] = torch.split()[0]
    return built


# ---------------------------------------------------------------------------------------------
# The reward image


class RewardContainer:
    def __init__(self, docker: Docker, image: str, *options: str) -> None:
        self.docker = docker
        self.port = free_port()
        self.started = time.monotonic()
        self.id = docker(
            ["run", "-d", "-p", f"127.0.0.1:{self.port}:8000", *options, image]
        ).stdout.strip()
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> float:
        def ready() -> bool:
            state = self.docker.inspect(self.id)["State"]
            assert state["Running"], f"the container exited: {self.logs()}"
            return _get(self.url + "/readyz")[0] == 200

        poll_until(ready, "/readyz", HEALTHY_WITHIN_S, interval=0.5)
        return time.monotonic() - self.started

    def wait_healthy(self) -> float:
        def healthy() -> bool:
            health = self.docker.inspect(self.id)["State"].get("Health") or {}
            assert health.get("Status") != "unhealthy", health
            return health.get("Status") == "healthy"

        poll_until(healthy, "a healthy status", HEALTHY_WITHIN_S, interval=0.5)
        return time.monotonic() - self.started

    def logs(self) -> str:
        result = self.docker(["logs", "--tail", "50", self.id], check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        self.docker(["rm", "-f", self.id], check=False)


def _readme_example() -> tuple[dict[str, Any], dict[str, Any]]:
    """The README's `curl .../reward -d '...'` body and the JSON answer shown after it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    request = re.search(r"curl[^\n]*/reward[^\n]*-d '(\{.*?\})'", readme, re.S)
    assert request, "README.md has no curl example of /reward"
    answer = re.search(r"```json\n(.*?)```", readme[request.end() :], re.S)
    assert answer, "README.md shows no JSON answer after its /reward example"
    return json.loads(request.group(1)), json.loads(answer.group(1))


def _post_json(url: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200
        return dict(json.loads(response.read()))


def test_reward_image(docker: Docker, images: dict[str, str], figures: dict[str, Any]) -> None:
    """The CPU reward image: ready and healthy, the README's example rewards, non-root,
    no torch, the model baked in."""
    reward = RewardContainer(docker, images["reward"])
    try:
        figures["reward_ready_s"] = round(reward.wait_ready(), 1)
        figures["reward_healthy_s"] = round(reward.wait_healthy(), 1)
        body, shown = _readme_example()
        answer = _post_json(reward.url + "/reward", body)
        assert answer["model"] == shown["model"]
        assert answer["qtype"] == shown["qtype"]
        assert answer["rewards"] == pytest.approx(shown["rewards"], abs=1e-4)
        for name, values in shown["components"].items():
            if name == "branch":
                assert answer["components"][name] == values
            else:
                assert answer["components"][name] == pytest.approx(values, abs=1e-4), name
        figures["reward_idle_mib"] = round(docker.memory_mib(reward.id))
        # The query-type classifier is a fine-tuned encoder of its own: its memory cost is
        # what the same image uses idle without it (typed items only).
        bare = RewardContainer(
            docker, images["reward"], "-e", "R3_CLASSIFIER=/none", "-e", "R3_ALLOW_NO_CLASSIFIER=1"
        )
        try:
            bare.wait_ready()
            typed = {**body, "qtype": shown["qtype"]}
            assert _post_json(bare.url + "/reward", typed)["rewards"] == pytest.approx(
                shown["rewards"], abs=1e-4
            )
            figures["reward_idle_no_classifier_mib"] = round(docker.memory_mib(bare.id))
        finally:
            bare.remove()

        assert docker.inspect(reward.id)["Config"]["User"] == "10001:10001"
        assert docker(["exec", reward.id, "id", "-u"]).stdout.strip() == "10001"
        probe = (
            "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnxruntime'))"
        )
        torch, ort = docker(["exec", reward.id, "python", "-c", probe]).stdout.split(" ", 1)
        assert torch == "None", "torch is in the runtime image"
        assert ort.strip() != "None"
        env = dict(e.split("=", 1) for e in docker.inspect(reward.id)["Config"]["Env"])
        assert env["R3_MODEL"] == "/models/default" and env["R3_HOST"] == "0.0.0.0"
    finally:
        reward.remove()


# ---------------------------------------------------------------------------------------------
# Drain: `docker stop` while requests are in flight


def _load_body(index: int, items: int) -> bytes:
    """A /reward body of distinct, longish texts (no cache hits), OPENENDED."""
    words = "the of sea waves wind light harbour keeper storm night boat shore".split()
    # The item's own numbers in every text: with only the word pattern, the 576 texts were
    # 12 distinct ones, the cache answered most, and the stop could come after the last.
    texts = [
        f"Entry {index}-{i}. "
        + " ".join(
            words[(index * 7 + i * 3 + k) % len(words)] + str((k + 5 * i + 11 * index) % 97)
            for k in range(90)
        )
        for i in range(items)
    ]
    body = {
        "query": [f"Write about item {index}-{i}: {t[:60]}" for i, t in enumerate(texts)],
        "response": texts,
        "qtype": ["OPENENDED"] * items,
    }
    return json.dumps(body).encode()


class InFlight(threading.Thread):
    """One request on its own connection; ``sent`` is set once the body is on the wire."""

    def __init__(self, port: int, body: bytes) -> None:
        super().__init__(daemon=True)
        self.port, self.body = port, body
        self.sent = threading.Event()
        self.status: int | None = None
        self.rewards: list[float] | None = None
        self.error: BaseException | None = None
        self.finished_at = 0.0

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            connection.request("POST", "/reward", self.body, {"content-type": "application/json"})
            self.sent.set()
            response = connection.getresponse()
            self.status = response.status
            self.rewards = json.loads(response.read()).get("rewards")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.sent.set()
        finally:
            self.finished_at = time.monotonic()
            connection.close()


@pytest.mark.parametrize("init", [False, True], ids=["pid1", "init"])
def test_docker_stop_answers_every_in_flight_request(
    docker: Docker, images: dict[str, str], figures: dict[str, Any], init: bool
) -> None:
    """SIGTERM under load: every request already sent gets its 200; then a clean exit, with
    status 0 when r3-serve is PID 1 and 143 under an init (`--init`, compose `init: true`)."""
    container = RewardContainer(docker, images["reward"], *(["--init"] if init else []))
    try:
        container.wait_ready()
        requests, items = 12, 48
        load = [InFlight(container.port, _load_body(i, items)) for i in range(requests)]
        for thread in load:
            thread.start()
        for thread in load:
            assert thread.sent.wait(60), "a request could not be sent"
        # The connections are accepted in order: once a later one is answered, all of these
        # are in the server's hands.
        assert _get(container.url + "/healthz")[0] == 200
        if not init:
            figures["reward_under_load_mib"] = round(docker.memory_mib(container.id))
        stop_at = time.monotonic()
        docker(["stop", "-t", "120", container.id], timeout=180)
        stopped_in = time.monotonic() - stop_at
        for thread in load:
            thread.join(60)
        errors = [(t.status, t.error) for t in load if t.status != 200]
        assert not errors, f"in-flight requests lost on docker stop: {errors}"
        assert all(t.rewards is not None and len(t.rewards) == items for t in load)
        drained = sum(t.finished_at > stop_at for t in load)
        assert drained >= 1, "every request had finished before the stop: nothing was in flight"
        state = docker.inspect(container.id)["State"]
        expected = 143 if init else 0
        assert state["ExitCode"] == expected, (
            f"exit status {state['ExitCode']} (deploy/README.md documents {expected}); "
            f"logs: {container.logs()}"
        )
        key = "init" if init else "pid1"
        figures[f"drain_{key}"] = {
            "in_flight": requests,
            "answered_after_stop": drained,
            "stop_s": round(stopped_in, 1),
            "exit_code": state["ExitCode"],
        }
    finally:
        container.remove()


# ---------------------------------------------------------------------------------------------
# The CPU compose stack: reward + trainer + trainer-metrics + Prometheus


def _prometheus_query(base: str, expr: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"query": expr})
    status, body = _get(f"{base}/api/v1/query?{query}")
    assert status == 200, f"{expr!r}: {status} {body[:500]!r}"
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return dict(answer["data"])


def _compose_service(docker: Docker, env: dict[str, str], service: str) -> str:
    return str(docker(["compose", "ps", "-a", "-q", service], env=env).stdout.strip())


def _typed(docker: Docker, command: str, env: dict[str, str], timeout: float) -> str:
    """Run a documented ``docker compose ...`` line as written (in the copy, through the
    test's Docker CLI); it must exit 0. Returns its output."""
    words = shlex.split(_as_typed(command))
    assert words[0] == "docker", command
    result = docker(words[1:], env=env, timeout=timeout, check=False)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def stack(
    docker: Docker,
    compose_env: dict[str, str],
    images: dict[str, str],
    fresh_host: list[str],
    figures: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """The documented `docker compose up -d --build` of the CPU stack, until the trainer has
    exited; then the documented `ps` and `logs trainer`; the documented `down -v` at the end."""
    env = compose_env
    later = [c for c in fresh_host[1:] if not c.startswith("docker compose up")]
    down = [c for c in later if " down" in c]
    # Not a documented step: containers a stopped earlier run of this test left behind.
    docker(["compose", "--profile", "grafana", "down", "-v", "--remove-orphans"], env=env,
           check=False, timeout=300)  # fmt: skip
    try:
        started = time.monotonic()
        up = next(c for c in fresh_host if c.startswith("docker compose up"))
        try:
            _typed(docker, up, env, timeout=1800)
        except AssertionError:
            tail = docker(["compose", "logs", "--no-color", "--tail", "60"], env=env, check=False)
            logger.error("stack logs:\n%s", tail.stdout)
            raise
        # `up` returns once the trainer has started, i.e. once the reward service is healthy.
        figures["stack_reward_healthy_s"] = round(time.monotonic() - started, 1)
        trainer = _compose_service(docker, env, "trainer")
        assert trainer, "compose started no trainer"
        code = docker(["wait", trainer], timeout=1800).stdout.strip()
        figures["stack_train_s"] = round(time.monotonic() - started, 1)
        outputs = {c: _typed(docker, c, env, timeout=120) for c in later if c not in down}
        logs = next((out for c, out in outputs.items() if " logs" in c), "")
        assert code == "0", f"the trainer exited {code}:\n{logs[-6000:]}"
        yield {
            "prometheus": f"http://127.0.0.1:{env['PROMETHEUS_PORT']}",
            "trainer_logs": logs,
            "outputs": outputs,
        }
    finally:
        result = docker(["compose", "ps", "-a"], env=env, check=False)
        logger.info("stack:\n%s", result.stdout)
        for command in down:
            _typed(docker, command, env, timeout=300)
        docker(["compose", "--profile", "grafana", "down", "-v"], env=env, check=False, timeout=300)


def test_documented_commands_show_the_stack_and_the_trainer_steps(
    stack: dict[str, Any], figures: dict[str, Any]
) -> None:
    """`docker compose ps` lists the stack; `logs trainer` has one line per PPO step."""
    steps = int(load_yaml(ROOT / "deploy" / "trainer" / "train.cpu.yaml")["steps"])
    ps = next(out for c, out in stack["outputs"].items() if c.endswith(" ps"))
    for service in ("reward", "trainer-metrics", "prometheus"):
        assert service in ps, ps
    for step in range(1, steps + 1):
        line = rf"step {step}: reward [-0-9.]+, kl [-0-9.]+, length"
        assert re.search(line, stack["trainer_logs"]), stack["trainer_logs"][-3000:]
    pace = re.search(r"steps in this run: ([0-9.]+) s/step", stack["trainer_logs"])
    assert pace, stack["trainer_logs"][-3000:]
    figures["trainer_s_per_step"] = float(pace.group(1))


def test_compose_cpu_stack_trains_and_prometheus_scrapes(
    docker: Docker, stack: dict[str, Any], figures: dict[str, Any]
) -> None:
    steps = int(load_yaml(ROOT / "deploy" / "trainer" / "train.cpu.yaml")["steps"])
    base = stack["prometheus"]

    def trained() -> list[dict[str, Any]]:
        result = _prometheus_query(base, "r3_trainer_step")["result"]
        return [r for r in result if float(r["value"][1]) >= steps]

    poll_until(trained, f"r3_trainer_step >= {steps} in Prometheus", 120, interval=0.5)
    for expr in ("r3_trainer_reward_mean", "r3_trainer_kl"):
        assert _prometheus_query(base, expr)["result"], f"{expr} was not scraped"
    requests = _prometheus_query(base, 'sum(r3_requests_total{job="r3-reward",status="200"})')
    assert float(requests["result"][0]["value"][1]) > 0, "the trainer's requests were not counted"
    targets = json.loads(_get(f"{base}/api/v1/targets")[1])["data"]["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in targets}
    assert health.get("r3-reward") == "up" and health.get("r3-trainer") == "up", health


def _dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))

        def walk(panel: dict[str, Any], dashboard_name: str = path.name) -> None:
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    out.append((f"{dashboard_name}: {panel.get('title')}", target["expr"]))
            for child in panel.get("panels") or []:
                walk(child)

        for panel in dashboard.get("panels") or []:
            walk(panel)
    return out


def test_grafana_dashboard_queries_run_on_the_stack_prometheus(stack: dict[str, Any]) -> None:
    """Grafana itself cannot be had here: its dashboards' queries run on the stack's real
    Prometheus instead (with Grafana's variables at their "All" values), and each query
    whose metrics the service and trainer have exposed returns series."""
    base = stack["prometheus"]
    names = set(json.loads(_get(f"{base}/api/v1/label/__name__/values")[1])["data"])
    assert {n for n in names if n.startswith("r3_trainer_")}, "no trainer metric was scraped"
    exprs = _dashboard_exprs()
    assert exprs
    empty = []
    for title, expr in exprs:
        concrete = expr.replace("$__rate_interval", "5m")
        concrete = re.sub(r"\$\{?(\w+)\}?", ".*", concrete)
        data = _prometheus_query(base, concrete)
        used = set(re.findall(r"\b(r3_[a-z0-9_]+)", concrete))
        # A query that filters on a label value (errors: status=~"4..|5..") may rightly be
        # empty; one with only Grafana's "All" variables must show the scraped series.
        filtered = re.search(r'\w+\s*(=~|!~|=|!=)\s*"(?!\.\*")', concrete.replace("__name__", ""))
        if used <= names and not filtered and not data["result"]:
            empty.append((title, concrete))
        regexes = re.findall(r'__name__=~"([^"]+)"', concrete)
        for regex in regexes:
            assert any(re.fullmatch(regex, n) for n in names), f"{title}: nothing matches {regex}"
    assert not empty, f"queries on scraped metrics that return nothing: {empty}"
