"""A tracking server that is down for longer than MLflow's client retries (about 4 minutes).

A real ``mlflow server`` (sqlite backend) is stopped and started again, around a spool's
writes and around a whole ``ablate run`` launch (embedded Ray): the trial keeps training,
and once the server is back, every (metric, step) it logged is on the server, once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from ablate import tracking
from ablate.tracking_spool import Spool
from tests.conftest import tiny_experiment

pytestmark = pytest.mark.slow

#: How long the launch's server stays down: longer than MLflow's own retries (~4 min).
OUTAGE_S = 360


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(uri: str) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    return False


class Server:
    """``mlflow server`` on a sqlite store, in its own process group, stoppable and restartable
    on the same port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}"]
        args += ["--artifacts-destination", str(self.root / "artifacts")]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
        )
        deadline = time.time() + 120
        while not _healthy(self.uri):
            assert self.proc.poll() is None and time.time() < deadline, (
                self.root / "server.log"
            ).read_text()[-2000:]
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "server"
    root.mkdir()
    srv = Server(root)
    srv.start()
    yield srv
    srv.stop()


def _history(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_a_spool_keeps_writes_through_an_outage_and_a_restart_and_sends_each_once(
    server: Server, tmp_path: Path
) -> None:
    experiment = tracking.ensure_experiment(server.uri, "spool", None)
    run_id = tracking.start_parent(server.uri, experiment, "trial", "spooled", {})
    spool = Spool(server.uri, run_id, new_run=True)
    spool.log_history([(1, {"loss": 1.0}), (2, {"loss": 2.0})])
    assert not spool.pending

    server.stop()
    started = time.monotonic()
    spool.log_history([(3, {"loss": 3.0}), (4, {"loss": 4.0})])
    note = tmp_path / "note.txt"
    note.write_text("kept")
    spool.log_artifacts(note)
    spool.set_tags({"kept": "yes"})
    # the writes returned at once (no 4 minutes of client retries) and wait in the spool
    assert time.monotonic() - started < 60
    assert [op["op"] for op in spool.pending] == ["metrics", "artifacts", "tags"]
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    spool.save(checkpoint)
    spool.close()

    # a restarted trial: the checkpoint's writes first, then it replays steps 3-4, goes on to 5
    restarted = Spool(server.uri, run_id, new_run=False)
    restarted.load(checkpoint)
    restarted.log_history([(3, {"loss": 3.0}), (4, {"loss": 4.0}), (5, {"loss": 5.0})])
    assert not restarted.drain(1), "the server is still down"
    assert "did not" not in restarted.unreachable_for()
    server.start()
    assert restarted.drain(60)
    restarted.close()

    assert _history(server.uri, run_id, "loss") == [1, 2, 3, 4, 5]
    run = MlflowClient(server.uri).get_run(run_id)
    assert run.data.tags["kept"] == "yes"
    names = [f.path for f in MlflowClient(server.uri).list_artifacts(run_id)]
    assert names == ["note.txt"], names


def test_points_a_lost_answer_already_stored_are_not_sent_again(server: Server) -> None:
    """A request stored by the server whose answer never came back: the spool reads the run's
    last steps before sending more, so the retry adds nothing twice."""
    experiment = tracking.ensure_experiment(server.uri, "lost-answer", None)
    run_id = tracking.start_parent(server.uri, experiment, "trial", "lost", {})
    tracking.log_metrics(server.uri, run_id, {"loss": 1.0, "val_psnr": 20.0}, step=10)
    spool = Spool(server.uri, run_id, new_run=False)  # it does not know what the run holds
    spool.log_history([(10, {"loss": 1.0, "val_psnr": 20.0}), (20, {"loss": 0.5})])
    assert spool.drain(30)
    assert _history(server.uri, run_id, "loss") == [10, 20]
    assert _history(server.uri, run_id, "val_psnr") == [10]


def _env() -> dict[str, str]:
    """The launches' environment: no cluster address or tracking URI from the caller's."""
    drop = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")
    return {k: v for k, v in os.environ.items() if k not in drop}


@contextlib.contextmanager
def _launch_until_trial_runs(
    raw: dict, server: Server, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``ablate run`` of ``raw`` against the server in a process group of its own (killed on
    the way out), once its trial has made its MLflow run: the driver and its log."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "ablate.cli", "run", str(space)]
            + ["--tracking-uri", server.uri, "--workdir", str(tmp_path / "work")],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=_env(),
            start_new_session=True,
        )
        try:
            deadline = time.time() + 300
            while not _trial_runs(server.uri, raw["name"]):
                assert driver.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            yield driver, log
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)


def test_a_launch_survives_its_tracking_server_down_for_six_minutes(
    server: Server, tmp_path: Path
) -> None:
    """``ablate run`` against the server; the server stops once the trial has made its run
    and stays down for :data:`OUTAGE_S`. The trial trains on, its end waits for the
    server, and every point it logged during the outage is on the server afterwards, once."""
    raw = tiny_experiment("outage", {"cpm": {"method": "coarse_to_fine"}}, seeds=[0])
    raw["train"].update({"steps": 1000, "eval_every": 250, "log_every": 10})
    with _launch_until_trial_runs(raw, server, tmp_path) as (driver, log):
        server.stop()
        down = time.time()
        time.sleep(OUTAGE_S)
        server.start()
        up = time.time()
        assert driver.wait(timeout=900) == 0, log.read_text()[-3000:]
    client = MlflowClient(server.uri)
    (run,) = _trial_runs(server.uri, "outage")
    assert run.info.status == "FINISHED", run.data.tags
    assert "psnr" in run.data.metrics
    stamped_in_outage = 0
    for key in run.data.metrics:
        points = client.get_metric_history(run.info.run_id, key)
        steps = [m.step for m in points]
        assert len(steps) == len(set(steps)), (key, sorted(steps))
        stamped_in_outage += sum(down <= m.timestamp / 1000 <= up for m in points)
    assert _history(server.uri, run.info.run_id, "loss") == list(range(10, 1001, 10))
    assert _history(server.uri, run.info.run_id, "val_psnr") == [250, 500, 750, 1000]
    # the trial trained on while the server was down: points measured then reached it later
    assert stamped_in_outage > 0, (down, up)
    print(f"tracking outage: {up - down:.0f} s; {stamped_in_outage} points measured during it")


def _trial_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`ablate.kind` = 'trial'")


def test_a_trial_that_outwaits_its_bound_fails_in_one_line_and_resume_sends_the_rest(
    server: Server, tmp_path: Path
) -> None:
    """``outage_wait_s: 20`` and the server down from the trial's start until after the launch
    ends: the trial trains to its end, waits 20 s for the server, fails in one line with its
    unsent writes in its checkpoint (so does its one retry); the driver waits 20 s for the
    server, then names the resume command in one line. With the server back, ``ablate resume``
    sends everything, once, without training again."""
    raw = tiny_experiment("outwaited", {"cpm": {"method": "coarse_to_fine"}}, seeds=[0])
    raw["train"].update({"steps": 300, "eval_every": 100, "log_every": 10})
    raw.update({"outage_wait_s": 20, "max_failures": 1})
    with _launch_until_trial_runs(raw, server, tmp_path) as (driver, log):
        server.stop()
        code = driver.wait(timeout=600)
    output = log.read_text()
    assert code != 0, output[-3000:]
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert "did not answer" in last and "ablate resume outwaited" in last, output[-3000:]
    server.start()
    (run,) = _trial_runs(server.uri, "outwaited")
    assert "psnr" not in run.data.metrics  # the trial's end never reached the server
    resumed = subprocess.run(
        [sys.executable, "-m", "ablate.cli", "resume", "outwaited"]
        + ["--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    (run,) = _trial_runs(server.uri, "outwaited")
    assert run.info.status == "FINISHED", resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "psnr" in run.data.metrics and "ablate.error" not in run.data.tags
    client = MlflowClient(server.uri)
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, sorted(steps))
    assert _history(server.uri, run.info.run_id, "loss") == list(range(10, 301, 10))
    assert "checkpoint" in [f.path for f in client.list_artifacts(run.info.run_id)]
    assert run.data.params.get("row") == "cpm"
