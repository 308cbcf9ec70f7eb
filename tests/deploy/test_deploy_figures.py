"""deploy/README.md's figures are the last ones the end-to-end test measured."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType

from deploy_support import ROOT


def _figures_module() -> ModuleType:
    path = ROOT / "deploy" / "docker" / "figures.py"
    spec = importlib.util.spec_from_file_location("deploy_figures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_figures_are_the_last_measured_ones() -> None:
    """Regenerate with: R3_DOCKER_FIGURES=F pytest tests/deploy/test_docker_e2e.py, then
    python deploy/docker/figures.py F."""
    figures = _figures_module()
    measured = json.loads(figures.FIGURES.read_text(encoding="utf-8"))
    readme = figures.README.read_text(encoding="utf-8")
    assert figures.readme_block(readme) == figures.block(measured)


def test_the_table_shows_each_measured_figure() -> None:
    figures = _figures_module()
    measured = json.loads(figures.FIGURES.read_text(encoding="utf-8"))
    text = figures.table(measured)
    for key in ("reward_image_mb", "trainer_image_mb", "reward_idle_mib", "stack_train_s"):
        assert key in measured
    assert f"{measured['reward_idle_mib']} MiB" in text
    assert f"{measured['reward_idle_no_classifier_mib']} MiB" in text
    assert measured["versions"]["compose"] in text
