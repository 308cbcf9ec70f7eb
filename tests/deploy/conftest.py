"""Shared fixtures of the static deployment checks (no Docker engine, no cluster needed).

Names are derived from the code at test time so that drift fails CI: the settings from
``r3_service.config.Settings``, the metric families from ``r3_service.metrics.Metrics``, and
the client's environment variables from the ``r3_client`` sources.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    ROOT,
    MetricFamily,
    Stage,
    interpolate,
    load_yaml,
    merge_compose,
    parse_dockerfile,
)

# ---------------------------------------------------------------------------------------------
# Names derived from the code


@pytest.fixture(scope="session")
def settings_fields() -> dict[str, Any]:
    """``R3_<NAME>`` -> pydantic field of every service setting."""
    from r3_service.config import Settings

    return {f"R3_{name.upper()}": info for name, info in Settings.model_fields.items()}


@pytest.fixture(scope="session")
def setting_names(settings_fields: dict[str, Any]) -> set[str]:
    return set(settings_fields)


@pytest.fixture(scope="session")
def client_env_names() -> set[str]:
    """The R3_* environment variables the Python client reads (R3_BASE_URL, R3_API_KEY)."""
    src = ROOT / "clients" / "python" / "src" / "r3_client"
    names: set[str] = set()
    for path in src.rglob("*.py"):
        names |= set(
            re.findall(
                r"""environ(?:\.get)?\s*[\(\[]\s*["'](R3_[A-Z0-9_]+)["']""",
                path.read_text(encoding="utf-8"),
            )
        )
        names |= set(
            re.findall(r"""getenv\(\s*["'](R3_[A-Z0-9_]+)["']""", path.read_text(encoding="utf-8"))
        )
    assert names, "found no R3_* environment variable in the client sources"
    return names


@pytest.fixture(scope="session")
def validate_settings(settings_fields: dict[str, Any]) -> Callable[[Mapping[str, str]], Any]:
    """Build ``Settings`` from ``R3_*`` string values (as the environment would pass them)."""
    from r3_service.config import Settings

    def build(values: Mapping[str, str]) -> Any:
        unknown = set(values) - set(settings_fields)
        assert not unknown, f"not service settings: {sorted(unknown)}"
        return Settings(**{name[3:].lower(): value for name, value in values.items()})

    return build


@pytest.fixture(scope="session")
def metric_families() -> dict[str, MetricFamily]:
    """The service's metric families, with the sample names Prometheus stores for each."""
    from prometheus_client.metrics import MetricWrapperBase

    from r3_service.metrics import Metrics

    metrics = Metrics()
    wrappers = {
        getattr(w, "_name", None): w
        for w in vars(metrics).values()
        if isinstance(w, MetricWrapperBase)
    }
    families: dict[str, MetricFamily] = {}
    for family in metrics.registry.collect():
        wrapper = wrappers.get(family.name)
        labels = tuple(getattr(wrapper, "_labelnames", ()) or ())
        if family.type == "counter":
            samples = {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            samples = {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        elif family.type == "summary":
            samples = {family.name, *(f"{family.name}_{s}" for s in ("sum", "count", "created"))}
        else:
            samples = {family.name}
        families[family.name] = MetricFamily(family.name, family.type, labels, samples)
    assert families, "the metrics registry is empty"
    return families


@pytest.fixture(scope="session")
def metric_samples(metric_families: dict[str, MetricFamily]) -> dict[str, MetricFamily]:
    """Sample name (``r3_requests_total``, ``r3_reward_bucket``...) -> its family."""
    return {s: f for f in metric_families.values() for s in f.samples}


# ---------------------------------------------------------------------------------------------
# Files


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def compose_raw() -> dict[str, Any]:
    pytest.importorskip("yaml", reason="pyyaml parses the compose files (pip install pyyaml)")
    return load_yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="session")
def compose(compose_raw: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml as compose resolves it with no .env (every default applies)."""
    return interpolate(compose_raw, {})


@pytest.fixture(scope="session")
def compose_cpu(compose_raw: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml merged with docker-compose.cpu.yml."""
    override = load_yaml(ROOT / "docker-compose.cpu.yml")
    return interpolate(merge_compose(compose_raw, override), {})


@pytest.fixture(scope="session")
def env_example() -> dict[str, str]:
    """Names documented in .env.example (set or commented out) -> their example value."""
    out: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?\s?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            out.setdefault(match.group(1), match.group(2).strip())
    return out


@pytest.fixture(scope="session")
def dockerfile_stages() -> list[Stage]:
    return parse_dockerfile(ROOT / "Dockerfile")
