"""The veRL adapter loaded by veRL's own ``get_custom_reward_fn``, against a live server.

``import verl`` pulls in Ray (``verl/__init__.py`` -> ``verl/protocol.py``), so veRL is
installed with ``--no-deps`` and its loader files are run by path: ``verl/utils/import_utils.py``
(stdlib only) and ``verl/trainer/ppo/reward.py`` with its two heavy top-level imports
(``verl.DataProto``, ``verl.utils.reward_score``) stubbed. ``get_custom_reward_fn`` and
``load_extern_object`` themselves are veRL's code, unchanged.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

omegaconf = pytest.importorskip("omegaconf")
VERL_SPEC = importlib.util.find_spec("verl")  # does not run verl/__init__.py
if VERL_SPEC is None or not VERL_SPEC.submodule_search_locations:
    pytest.skip("veRL is not installed (pip install --no-deps verl)", allow_module_level=True)
VERL_DIR = Path(next(iter(VERL_SPEC.submodule_search_locations)))

import numpy as np  # noqa: E402

import r3_client.integrations.verl as verl_adapter  # noqa: E402
from r3_client import Client  # noqa: E402

pytestmark = pytest.mark.integration

ADAPTER_PATH = str(Path(verl_adapter.__file__).resolve())
ITEMS: list[tuple[str, str, str | None, dict[str, Any]]] = [  # veRL call arguments
    ("r3", "Paris is the capital of France.", "Paris", {"question": "Capital of France?"}),
    (
        "r3",
        "The sea is deep and blue, it sings to me.",
        None,
        {"question": "Write a poem about the sea.", "qtype": "openended"},
    ),
    ("r3", "42", "42", {"prompt": [{"role": "user", "content": "6 * 7?"}]}),
]


def _exec_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stub(name: str) -> types.ModuleType:
    """A module whose every public attribute is ``None`` (``from verl import DataProto``)."""
    module = types.ModuleType(name)

    def __getattr__(attr: str) -> None:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return None

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


@pytest.fixture
def get_custom_reward_fn(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], Any]:
    """veRL's ``verl.trainer.ppo.reward.get_custom_reward_fn``, importable without Ray."""
    import_utils = _exec_file("verl.utils.import_utils", VERL_DIR / "utils" / "import_utils.py")
    stubs = {
        "verl": _stub("verl"),
        "verl.utils": _stub("verl.utils"),
        "verl.utils.reward_score": _stub("verl.utils.reward_score"),
        "verl.utils.import_utils": import_utils,
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    reward = _exec_file("verl.trainer.ppo.reward", VERL_DIR / "trainer" / "ppo" / "reward.py")
    return reward.get_custom_reward_fn


def _config(name: str, reward_kwargs: dict[str, Any] | None = None) -> Any:
    # The veRL >= 0.7 layout; the legacy top-level `custom_reward_function` is migrated to it.
    fn_cfg = {"path": ADAPTER_PATH, "name": name, "reward_kwargs": reward_kwargs or {}}
    return omegaconf.OmegaConf.create({"reward": {"custom_reward_function": fn_cfg}})


def _direct(base_url: str) -> list[float]:
    with Client(base_url=base_url) as client:
        return client.reward(
            query=["Capital of France?", "Write a poem about the sea.", [ITEMS[2][3]["prompt"][0]]],
            response=[item[1] for item in ITEMS],
            reference=["Paris", None, "42"],
            qtype=[None, "OPENENDED", None],
        ).rewards


def _close(fn: Any) -> None:
    """Close the client of the module copy veRL loaded (``fn`` is a ``functools.partial``)."""
    fn.args[0].__globals__["get_client"]().close()


@pytest.fixture
def env_server(live_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("R3_BASE_URL", live_server)  # the loaded module builds its client from env
    return live_server


def test_loader_compute_score(get_custom_reward_fn: Any, env_server: str) -> None:
    fn = get_custom_reward_fn(_config("compute_score"))
    raw = fn.args[0]
    assert raw.__name__ == "compute_score"
    assert raw.__module__ != verl_adapter.__name__  # veRL's own copy of the file

    async def reward_loop() -> list[Any]:
        # NaiveRewardManager.run_single (verl 0.8.0, experimental/reward_loop/reward_manager/
        # naive.py): keyword call in the default executor, all samples of a batch at once.
        loop = asyncio.get_running_loop()

        def one(item: tuple[Any, ...]) -> Any:
            extra_info = {**item[3], "num_turns": None, "rollout_reward_scores": {}}
            return fn(
                data_source=item[0],
                solution_str=item[1],
                ground_truth=item[2],
                extra_info=extra_info,
            )

        return await asyncio.gather(*(loop.run_in_executor(None, one, item) for item in ITEMS))

    try:
        scores = asyncio.run(reward_loop())
    finally:
        _close(fn)
    assert all(isinstance(s, float) for s in scores)
    assert scores == pytest.approx(_direct(env_server), abs=1e-6)


def test_loader_compute_score_batch(get_custom_reward_fn: Any, env_server: str) -> None:
    fn = get_custom_reward_fn(_config("compute_score_batch", {"unused_option": 1}))
    # non_tensor_batch columns are numpy object arrays
    extras = np.empty(len(ITEMS), dtype=object)
    extras[:] = [{**item[3], "rollout_reward_scores": {}} for item in ITEMS]
    try:
        # BatchRewardManager.verify (verl 0.8.0, workers/reward_manager/batch.py).
        scores = fn(
            data_sources=np.array([item[0] for item in ITEMS], dtype=object),
            solution_strs=[item[1] for item in ITEMS],
            ground_truths=[item[2] for item in ITEMS],
            extra_infos=extras,
        )
    finally:
        _close(fn)
    assert isinstance(scores, list) and len(scores) == len(ITEMS)
    assert scores == pytest.approx(_direct(env_server), abs=1e-6)


def test_loader_missing_query_fails_clearly(get_custom_reward_fn: Any) -> None:
    fn = get_custom_reward_fn(_config("compute_score"))
    try:
        with pytest.raises(ValueError, match="extra_info"):
            fn(data_source="r3", solution_str="x", ground_truth="y", extra_info={})
    finally:
        _close(fn)
