"""Which failed MLflow calls a spool keeps for later, and how fast it gives up on a dead port."""

from __future__ import annotations

import os
import socket
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2 as codes

from ablate import tracking
from ablate.tracking_spool import Spool, wait_for_server


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_refused_connection_is_unreachable_and_a_refused_request_is_not() -> None:
    uri = _closed_port()
    with tracking.fail_fast(), pytest.raises(Exception) as refused:
        tracking.client(uri).get_run("0" * 32)
    assert tracking.is_unreachable(refused.value)
    assert tracking.is_unreachable(
        MlflowException("db away", error_code=codes.TEMPORARILY_UNAVAILABLE)
    )
    missing = MlflowException("no such run", error_code=codes.RESOURCE_DOES_NOT_EXIST)
    assert not tracking.is_unreachable(missing)
    bad = MlflowException("changed param", error_code=codes.INVALID_PARAMETER_VALUE)
    assert not tracking.is_unreachable(bad)
    assert not tracking.is_unreachable(ValueError("a bug"))


def test_fail_fast_restores_the_clients_settings() -> None:
    before = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    with tracking.fail_fast():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == before


def test_writes_to_a_dead_server_wait_in_order_and_survive_a_checkpoint(tmp_path) -> None:
    uri = _closed_port()
    spool = Spool(uri, "r" * 32, new_run=True)
    started = time.monotonic()
    spool.log_metrics({"loss": 1.0}, step=2)
    (tmp_path / "a.txt").write_text("a")
    spool.log_artifacts(tmp_path / "a.txt", "files")
    spool.finish("completed")
    assert time.monotonic() - started < 30  # no four minutes of client retries per write
    assert [op["op"] for op in spool.pending] == ["metrics", "artifacts", "finish"]
    assert not spool.drain(0)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    spool.save(checkpoint)
    spool.close()
    restored = Spool(uri, "r" * 32, new_run=False)
    restored.load(checkpoint)
    assert restored.pending == spool.pending
    assert (restored.folder / restored.pending[1]["name"] / "a.txt").read_text() == "a"
    other_run = Spool(uri, "o" * 32, new_run=False)
    other_run.load(checkpoint)  # a checkpoint of another run is not this run's writes
    assert other_run.pending == []
    for each in (restored, other_run):
        each.close()


def test_waiting_for_a_dead_server_ends_in_one_line() -> None:
    uri = _closed_port()
    with pytest.raises(tracking.TrackingUnreachable) as err:
        wait_for_server(lambda: tracking.client(uri).get_run("0" * 32), "start", uri, 0)
    assert f"could not start: the MLflow server at {uri} did not answer" in str(err.value)
    assert "\n" not in str(err.value)
