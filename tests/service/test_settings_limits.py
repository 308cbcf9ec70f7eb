"""Settings that make requests impossible are named at start; connection budgets fit the fds."""

from __future__ import annotations

from r3_service.config import Settings
from r3_service.server import connection_budget


def test_a_queue_smaller_than_one_request_is_warned_about() -> None:
    assert Settings().warnings() == []
    (warning,) = Settings(max_queue_texts=64, max_items_per_request=40).warnings()
    assert "R3_MAX_QUEUE_TEXTS=64" in warning and "413" in warning


def test_connection_cap_and_backlog_fit_the_open_file_limit() -> None:
    assert connection_budget(2048, 1_048_576) == (2048, 2048)
    assert connection_budget(2048, 20_000) == (2048, 2048)
    assert connection_budget(2048, 1024) == (512, 256)  # half and a quarter of 1,024 files
    cap, backlog = connection_budget(100_000, 4096)
    assert cap + backlog < 4096
