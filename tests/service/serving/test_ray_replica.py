"""One Serve replica's logic without a cluster: health check = /readyz, model copies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from r3_service.classifier.runtime import FineTunedClassifier
from r3_service.scoring import RewardScorer
from r3_service.serving.model_ship import COMPLETE_MARK, digest_of, folder_files, write_copy
from r3_service.serving.ray_app import REPLICA_HEADER, R3Replica, RayServeArgs, replica_settings


async def _replica(model: Path) -> R3Replica:
    replica = R3Replica.__new__(R3Replica)
    await R3Replica.__init__(replica, {"model": str(model), "metrics_interval_s": 0})
    return replica


@asynccontextmanager
async def _healthy_replica(model: Path) -> AsyncIterator[tuple[R3Replica, RewardScorer]]:
    """A replica whose app is running and whose first health check has passed."""
    replica = await _replica(model)
    app = replica.r3_app
    async with app.router.lifespan_context(app):
        await replica.check_health()  # the first check waits for the model to load
        scorer = replica.state.scorer
        assert scorer is not None
        yield replica, scorer


@pytest.mark.integration
async def test_health_check_is_the_readiness_of_readyz(minilm_dir: Path) -> None:
    async with _healthy_replica(minilm_dir) as (replica, scorer):
        status, headers, body = await replica.handle_request("GET", "/readyz", [], b"")
        assert status == 200 and (REPLICA_HEADER, replica.replica_id) in headers
        status, _, body = await replica.handle_request(
            "POST",
            "/reward",
            [("content-type", "application/json")],
            json.dumps({"query": ["What is 2+2?"], "response": ["4"]}).encode(),
        )
        assert status == 200 and len(json.loads(body)["rewards"]) == 1
        scorer.engine.batcher.stop()  # the inference worker is gone
        status, _, body = await replica.handle_request("GET", "/readyz", [], b"")
        assert status == 503
        reason = json.loads(body)["error"]["message"]
        with pytest.raises(RuntimeError) as failed:
            await replica.check_health()
        assert str(failed.value) == reason == "not ready: inference worker died"


@pytest.mark.integration
async def test_health_check_sees_the_classifier_worker_too(minilm_dir: Path) -> None:
    async with _healthy_replica(minilm_dir) as (replica, scorer):
        assert isinstance(scorer.classifier, FineTunedClassifier)  # the shipped one
        assert [name for name, _ in scorer.workers()] == ["inference", "query-type classifier"]
        typing = scorer.classifier.engine
        typing.batcher.stop()  # the classifier's inference worker is gone
        status, _, body = await replica.handle_request("GET", "/readyz", [], b"")
        assert status == 503
        with pytest.raises(RuntimeError, match="query-type classifier worker died"):
            await replica.check_health()


@pytest.mark.integration
async def test_metrics_count_the_classifier_workers_hung_batches_and_expired_texts(
    minilm_dir: Path,
) -> None:
    async with _healthy_replica(minilm_dir) as (replica, scorer):
        assert isinstance(scorer.classifier, FineTunedClassifier)
        typing, engine = scorer.classifier.engine, scorer.engine
        typing.batcher.hung_batches += 2  # as the classifier's watchdog would count them
        typing.batcher.expired_texts += 3
        _, _, body = await replica.handle_request("GET", "/metrics", [], b"")
        lines = dict(line.rsplit(" ", 1) for line in body.decode().splitlines() if line[:1] != "#")
        assert float(lines["r3_hung_batches_total"]) == engine.batcher.hung_batches + 2
        assert float(lines["r3_expired_texts_total"]) == engine.batcher.expired_texts + 3


@pytest.mark.integration
async def test_health_check_reports_a_model_that_failed_to_load(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    replica = await _replica(tmp_path)
    app = replica.r3_app
    async with app.router.lifespan_context(app):
        with pytest.raises(RuntimeError, match="not ready: model failed to load"):
            await replica.check_health()


def test_replica_settings_follow_the_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = replica_settings(RayServeArgs(num_cpus=2), env={})
    assert (cpu.provider, cpu.intra_op_threads) == ("cpu", 2)
    gpu = replica_settings(RayServeArgs(num_gpus=0.5, num_cpus=0.5), env={})
    assert (gpu.provider, gpu.intra_op_threads) == ("cuda", 1)
    monkeypatch.setenv("R3_PROVIDER", "cpu")
    assert replica_settings(RayServeArgs(num_gpus=1)).provider == "cpu"  # the env wins
    assert replica_settings(RayServeArgs(settings={"max_wait_ms": 7}), env={}).max_wait_ms == 7
    with pytest.raises(ValueError, match="max_replicas"):
        RayServeArgs(min_replicas=3, max_replicas=2)


def test_a_node_copy_is_written_once_and_atomically(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"\x00weights")
    (src / "sub" / "tokenizer.json").write_text("{}")
    named = [(n, p.read_bytes()) for n, p in folder_files(src)]
    digest = digest_of(named)
    root = tmp_path / "copies"
    first = write_copy(root, digest, dict(named))
    again = write_copy(root, digest, {"model.onnx": b"ignored: a copy exists"})
    assert first == again == root / digest
    assert (first / COMPLETE_MARK).is_file()
    assert (first / "model.onnx").read_bytes() == b"\x00weights"
    assert digest_of([(n, p.read_bytes()) for n, p in folder_files(first)]) == digest
    assert sorted(p.name for p in root.iterdir()) == [digest]  # no temporary left
    assert digest_of([("model.onnx", b"\x00weightz")]) != digest_of(
        [("model.onnx", b"\x00weights")]
    )
    with pytest.raises(ValueError, match="unsafe"):
        write_copy(root, "other", {"../escape": b""})


def test_build_app_maps_the_arguments_onto_serve(minilm_dir: Path) -> None:
    from r3_service.serving.ray_app import build_app

    fixed = build_app({"model": str(minilm_dir), "ship_model": False, "num_replicas": 3})
    deployment = fixed._bound_deployment  # the R3Reward deployment Serve will run
    assert deployment.name == "R3Reward" and deployment.num_replicas == 3
    assert deployment.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert fixed._bound_deployment.init_args[0]["model"] == str(minilm_dir)
    scaled = build_app(
        {
            "model": str(minilm_dir),
            "ship_model": False,
            "min_replicas": 0,
            "max_replicas": 6,
            "target_ongoing_requests": 4,
            "num_cpus": 0.5,
            "num_gpus": 0.25,
        }
    )._bound_deployment
    autoscaling = scaled._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (0, 6)
    assert autoscaling.target_ongoing_requests == 4
    assert scaled.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 0.25}
    # Replica counts stay out of the replicas' arguments: rescaling restarts none.
    assert "num_replicas" not in scaled.init_args[0]
