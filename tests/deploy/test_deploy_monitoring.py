"""Static checks of the Prometheus config, Grafana provisioning and dashboard, and the
trainer metrics exporter."""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from deploy_support import (
    PROMQL_FUNCTIONS,
    ROOT,
    MetricFamily,
    environment,
    grafana_label_values_metric,
    load_yaml,
    promql_check_balanced,
    promql_names,
    promql_range_functions,
    promql_selectors,
)

pytest.importorskip("yaml", reason="pyyaml parses the deployment files (pip install pyyaml)")

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
#: Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
#: What the issue asks the dashboard to show, as the metric families that carry it.
REQUIRED_FAMILIES = {
    "r3_requests": "request rate",
    "r3_request_duration_seconds": "p50/p99 latency",
    "r3_queue_size": "queue depth",
    "r3_batch_size": "batch size",
    "r3_cache_hits": "cache hit ratio",
    "r3_cache_misses": "cache hit ratio",
    "r3_reward": "reward distribution per query type",
    "r3_query_copy": "share of query-copying responses",
}


def _exporter() -> ModuleType:
    path = ROOT / "deploy" / "trainer" / "metrics_exporter.py"
    spec = importlib.util.spec_from_file_location("_deploy_metrics_exporter", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Prometheus


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return load_yaml(ROOT / "deploy" / "prometheus" / "prometheus.yml")


def _targets(prometheus: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for job in prometheus["scrape_configs"]:
        targets = [t for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]
        out[job["job_name"]] = (job.get("metrics_path", "/metrics"), targets)
    return out


def test_prometheus_scrapes_the_reward_service(
    prometheus: dict[str, Any], compose: dict[str, Any]
) -> None:
    reward_port = _container_port(compose, "reward")
    scraped = [
        (path, target)
        for path, targets in _targets(prometheus).values()
        for target in targets
        if target.split(":")[0] == "reward"
    ]
    assert scraped == [("/metrics", f"reward:{reward_port}")]
    names = [job["job_name"] for job in prometheus["scrape_configs"]]
    assert len(names) == len(set(names)), "job names are unique"


def test_prometheus_targets_are_compose_services(
    prometheus: dict[str, Any], compose: dict[str, Any]
) -> None:
    services = set(compose["services"]) | {"localhost"}
    for _, targets in _targets(prometheus).values():
        for target in targets:
            host, _, port = target.partition(":")
            assert host in services, f"{target}: no such compose service"
            assert port.isdigit()


def test_prometheus_scrapes_the_trainer_exporter(
    prometheus: dict[str, Any], compose: dict[str, Any]
) -> None:
    command = compose["services"]["trainer-metrics"]["command"]
    port = command[command.index("--port") + 1]
    assert ("/metrics", [f"trainer-metrics:{port}"]) in _targets(prometheus).values()


def _container_port(compose: dict[str, Any], service: str) -> int:
    env = environment(compose["services"][service])
    return int(env["R3_PORT"] or 0)


# ---------------------------------------------------------------------------------------------
# Grafana provisioning


@pytest.fixture(scope="module")
def datasources() -> list[dict[str, Any]]:
    folder = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
    out = []
    for path in sorted(folder.glob("*.y*ml")):
        data = load_yaml(path)
        assert data["apiVersion"] == 1
        out += data["datasources"]
    assert out
    return out


def test_datasource_points_at_the_compose_prometheus(
    datasources: list[dict[str, Any]], compose: dict[str, Any]
) -> None:
    prometheus = [d for d in datasources if d["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0].get("uid")
    url = prometheus[0]["url"]
    match = re.fullmatch(r"http://([\w-]+):(\d+)/?", url)
    assert match and match.group(1) in compose["services"]
    assert f":{match.group(2)}" in " ".join(compose["services"][match.group(1)]["ports"])


def test_dashboard_provider() -> None:
    path = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "r3.yml"
    data = load_yaml(path)
    assert data["apiVersion"] == 1
    (provider,) = data["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# ---------------------------------------------------------------------------------------------
# Dashboards


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield panel.get("title", "?"), target.get("expr", "")


def _datasource_uid(ref: Any) -> str | None:
    return ref.get("uid") if isinstance(ref, dict) else ref


@pytest.fixture(scope="module", params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return json.loads(Path(request.param).read_text(encoding="utf-8"))


def test_there_is_a_dashboard() -> None:
    assert DASHBOARDS


def test_dashboard_structure(dashboard: dict[str, Any], datasources: list[dict[str, Any]]) -> None:
    assert dashboard.get("uid") and dashboard.get("title")
    assert isinstance(dashboard.get("schemaVersion"), int)
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    uids = {d["uid"] for d in datasources}
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    if "datasource" in variables:
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["current"]["value"] in uids
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        for ref in [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]:
            uid = _datasource_uid(ref)
            assert uid in uids or uid == "${datasource}", f"{panel['title']}: datasource {uid}"
        assert panel["targets"], f"{panel['title']}: no query"


def _allowed_name(name: str, samples: dict[str, MetricFamily], prefix: str) -> bool:
    return name in samples or name in SYNTHETIC or name.startswith(prefix)


def test_dashboard_queries_only_exposed_metrics(
    dashboard: dict[str, Any], metric_samples: dict[str, MetricFamily]
) -> None:
    """Every metric a query reads is one the service (or the trainer exporter) exposes."""
    prefix = _exporter().PREFIX
    for title, expr in _exprs(dashboard):
        assert expr, f"{title}: empty expr"
        promql_check_balanced(expr)
        metrics, functions = promql_names(expr)
        unknown_functions = functions - PROMQL_FUNCTIONS
        assert not unknown_functions, f"{title}: unknown functions {unknown_functions} in {expr}"
        unknown = {m for m in metrics if not _allowed_name(m, metric_samples, prefix)}
        assert not unknown, f"{title}: {sorted(unknown)} are not exposed (renamed?) in {expr}"
        for selector in promql_selectors(expr):
            for op, value in selector.name_matchers():
                assert op in ("=", "=~") and value.startswith(prefix), (
                    f"{title}: __name__ matchers select the trainer's {prefix}* only: {expr}"
                )
            assert selector.name or selector.name_matchers(), f"{title}: selector without name"


def test_dashboard_label_matchers_exist(
    dashboard: dict[str, Any], metric_samples: dict[str, MetricFamily]
) -> None:
    for title, expr in _exprs(dashboard):
        for selector in promql_selectors(expr):
            family = metric_samples.get(selector.name or "")
            if family is None:
                continue
            known = set(family.labels) | {"instance", "job"}
            if selector.name and selector.name.endswith("_bucket"):
                known.add("le")
            for label, _, _ in selector.matchers:
                assert label in known, f"{title}: {selector.name} has no label {label!r}"


def test_dashboard_functions_fit_metric_types(
    dashboard: dict[str, Any], metric_samples: dict[str, MetricFamily]
) -> None:
    for title, expr in _exprs(dashboard):
        for function, metric in promql_range_functions(expr):
            family = metric_samples.get(metric)
            if family is None:
                continue
            assert family.type in ("counter", "histogram", "summary"), (
                f"{title}: {function}() over the {family.type} {metric}"
            )
            assert not metric.endswith("_created"), f"{title}: {metric}"
        for match in re.finditer(r"histogram_quantile\s*\(", expr):
            tail = expr[match.end() :]
            buckets = re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*[\{\[]", tail)
            assert buckets and buckets[0].endswith("_bucket"), f"{title}: {expr}"


def test_dashboard_covers_the_issue(
    dashboard: dict[str, Any], metric_samples: dict[str, MetricFamily]
) -> None:
    used: set[str] = set()
    for _, expr in _exprs(dashboard):
        metrics, _ = promql_names(expr)
        used |= {metric_samples[m].name for m in metrics if m in metric_samples}
    missing = {f: why for f, why in REQUIRED_FAMILIES.items() if f not in used}
    assert not missing, f"the dashboard lacks: {missing}"
    exprs = " ".join(e for _, e in _exprs(dashboard))
    assert "histogram_quantile(0.5" in exprs and "histogram_quantile(0.99" in exprs
    assert re.search(r"by \([^)]*qtype", exprs), "rewards are broken down per query type"
    trainer_panels = [t for t, e in _exprs(dashboard) if _exporter().PREFIX in e]
    assert any("reward" in t.lower() for t in trainer_panels)
    assert any("kl" in t.lower() for t in trainer_panels)


def test_dashboard_variables_query_exposed_metrics(
    dashboard: dict[str, Any], metric_samples: dict[str, MetricFamily]
) -> None:
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        metric = grafana_label_values_metric(query)
        assert metric, f"variable {variable['name']}: expected label_values(metric, label)"
        assert metric in metric_samples, f"variable {variable['name']}: {metric} is not exposed"
        label = query.split(",", 1)[1].strip(" )")
        family = metric_samples[metric]
        assert label in set(family.labels) | {"instance", "job"}, variable["name"]


def test_dashboard_uses_only_defined_variables(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    text = json.dumps(dashboard["panels"])
    used = set(re.findall(r"\$\{?([A-Za-z_]\w*)", text)) - {"__rate_interval", "__interval"}
    used = {u for u in used if not u.startswith("__")}
    assert used <= defined, f"undefined variables: {used - defined}"


# ---------------------------------------------------------------------------------------------
# The trainer metrics exporter


def test_exporter_renders_the_last_record(tmp_path: Path) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    exporter = _exporter()
    assert "r3_trainer_metrics_file_present 0" in exporter.render(tmp_path)
    run = tmp_path / "run-1"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "reward/mean": 0.5, "kl": 0.1, "name": "x"})
        + "\n"
        + json.dumps({"step": 2, "reward/mean": 0.7, "kl": float("nan"), "ppo": {"kl_coef": 0.2}})
        + "\n"
        + '{"step": 3, "rew'  # a torn line while the trainer writes
    )
    text = exporter.render(tmp_path)
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["r3_trainer_step"].samples[0].value == 2
    assert families["r3_trainer_reward_mean"].samples[0].value == 0.7
    assert families["r3_trainer_reward_mean"].samples[0].labels == {"run": "run-1"}
    assert families["r3_trainer_ppo_kl_coef"].samples[0].value == 0.2
    assert "r3_trainer_kl" in families
    assert families["r3_trainer_metrics_file_present"].samples[0].value == 1
    assert all(name.startswith(exporter.PREFIX) for name in families)


def test_exporter_serves_http(tmp_path: Path) -> None:
    exporter = _exporter()
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "kl": 0.01}\n')
    server = exporter.ThreadingHTTPServer(("127.0.0.1", 0), exporter.make_handler(tmp_path))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/plain")
        assert 'r3_trainer_kl{run="."} 0.01' in body
    finally:
        server.shutdown()
        server.server_close()
