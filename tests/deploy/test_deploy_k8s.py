"""Static checks of the Kubernetes manifests under deploy/k8s (no cluster needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
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


def test_kubernetes_schemas() -> None:
    """Every core manifest against the Kubernetes OpenAPI schemas (strict: no unknown keys)."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate for schema checks"
    )
    version = kubernetes_validate.latest_version()
    for path in FILES:
        for doc in _docs(path):
            if "kind" not in doc or doc["kind"] in NON_CORE:
                continue
            kubernetes_validate.validate(doc, version, strict=True)


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize render is not checked")
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
