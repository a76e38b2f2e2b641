"""Launches that tell the truth, run as a user runs them: the ``ablate`` CLI in a fresh
folder, an embedded Ray, the sqlite store, no environment variable set by the test.

- Ctrl-C (SIGINT) during ``ablate run``: exit 130, the parent and the running trial KILLED and
  tagged ``interrupted``, the ``ablate resume`` hint, every trial in ``ablate status``, no
  process left; ``ablate resume`` then completes each trial in its own run, logging each
  (metric, step) once, and leaves the study's report on the parent run.
- ``ablate ui`` serves the study view (checked in headless Chromium) and SIGTERM leaves no
  server process and a free port.
- Two first launches at once on one new work directory both finish.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ablate.launch.local_ray import token_path
from ablate.mlflow_ui import group_members
from tests.conftest import mlflow_runs, tiny_experiment
from tests.unit.dashboards.test_html import chromium_url, needs_chromium

pytestmark = pytest.mark.slow

NAME = "honest"


def _space(folder: Path, name: str, seeds: list[int], steps: int) -> Path:
    raw = tiny_experiment(name, {"cpm": {"method": "coarse_to_fine"}})
    raw["seeds"] = seeds
    raw["train"] = {**raw["train"], "steps": steps, "eval_every": 10, "log_every": 10}
    raw["resources"] = {"cpu": 1, "max_concurrent": 1}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _start(args: list[str], cwd: Path, log: str) -> subprocess.Popen:
    """``ablate ARGS`` in ``cwd``, in a session of its own (so the test can clean up after
    it), its output in ``cwd/log``."""
    out = (cwd / log).open("w")
    return subprocess.Popen(
        ["ablate", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _text(cwd: Path, log: str) -> str:
    return " ".join((cwd / log).read_text().split())  # rich wraps lines at 80 columns


def _processes_in(folder: Path) -> list[int]:
    """Live processes whose working directory is under ``folder`` (ablate, Ray's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = _stat(entry)[0]
        except OSError:
            continue
        if state != "Z" and Path(cwd).is_relative_to(folder):
            found.append(int(entry.name))
    return found


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(_stat(entry)[1]) == pid:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _stat(entry: Path) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    return (entry / "stat").read_text().rsplit(")", 1)[1].split()


def _listening(pids: list[int]) -> list[str]:
    """The addresses the given processes listen on (TCP, from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                found.append(fields[1].split(":")[0])
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.3)
    pytest.fail(f"no {what} within {timeout} s")


def _kill_session(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _runs(workdir: Path, name: str):
    return mlflow_runs(f"sqlite:///{workdir / 'mlflow.db'}", name)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``ablate run`` interrupted by SIGINT once its first trial checkpointed, what that left,
    then ``ablate status`` and ``ablate resume``."""
    folder = tmp_path_factory.mktemp("honest")
    space = _space(folder, NAME, seeds=[0, 1, 2], steps=40)
    trial_dirs = folder / "runs" / "ray_results" / NAME
    driver = _start(["run", str(space)], folder, "run.log")
    try:
        _wait(lambda: any(trial_dirs.glob("*/checkpoint_*")), 300, "checkpoint", driver)
        listening = _listening(_processes_in(folder))
        driver.send_signal(signal.SIGINT)  # Ctrl-C
        rc = driver.wait(timeout=180)
    finally:
        _kill_session(driver)
    deadline = time.monotonic() + 30
    while _processes_in(folder) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _processes_in(folder)
    interrupted = _runs(folder / "runs", NAME)
    status = subprocess.run(
        ["ablate", "status", NAME], cwd=folder, capture_output=True, text=True, timeout=120
    )
    resumed = _start(["resume", NAME], folder, "resume.log")
    try:
        resume_rc = resumed.wait(timeout=400)
    finally:
        _kill_session(resumed)
    return SimpleNamespace(
        folder=folder,
        workdir=folder / "runs",
        rc=rc,
        log=_text(folder, "run.log"),
        listening=listening,
        left=left,
        interrupted=interrupted,
        status=status,
        resume_rc=resume_rc,
        resume_log=_text(folder, "resume.log"),
    )


def test_sigint_ends_the_launch_killed_with_the_resume_hint(study: SimpleNamespace) -> None:
    assert study.rc == 130, study.log[-3000:]
    assert f"Continue with: ablate resume {NAME} --workdir {study.workdir}" in study.log
    assert "Tuner.restore" not in study.log  # Ray's own hint is replaced by ours

    runs = study.interrupted
    parent = runs[runs["tags.ablate.kind"] == "launch"].iloc[0]
    assert parent["status"] == "KILLED" and parent["tags.ablate.status"] == "interrupted"
    assert re.match(
        r"interrupted by SIGINT: [0-2] of 3 trials finished", parent["tags.ablate.error"]
    )
    children = runs[runs["tags.ablate.kind"] == "trial"]
    stopped = children[children["tags.ablate.status"] != "completed"]
    assert len(stopped) >= 1  # the trial running when Ctrl-C came (40 steps: it was)
    assert (stopped["status"] == "KILLED").all()
    assert (stopped["tags.ablate.status"] == "interrupted").all()
    assert stopped["tags.ablate.error"].str.contains(f"ablate resume {NAME}").all()

    # the embedded Ray listened on 127.0.0.1 only, and nothing of it outlives the driver
    assert study.listening and set(study.listening) <= LOOPBACK, study.listening
    assert study.left == []
    token = token_path()
    if token is not None and token.exists():
        assert token.stat().st_mode & 0o077 == 0


def test_status_lists_every_trial_started_or_not(study: SimpleNamespace) -> None:
    assert study.status.returncode == 0, study.status.stderr
    out = study.status.stdout
    for trial in ("cpm-s0", "cpm-s1", "cpm-s2"):
        assert trial in out
    trials = study.interrupted[study.interrupted["tags.ablate.kind"] == "trial"]
    assert out.count("interrupted") >= (trials["tags.ablate.status"] == "interrupted").sum()
    assert out.count("not started") == 3 - len(trials)


def test_resume_completes_each_trial_once_without_duplicated_steps(
    study: SimpleNamespace,
) -> None:
    assert study.resume_rc == 0, study.resume_log[-3000:]
    assert f"{NAME}: 3 trials, 0 failed" in study.resume_log
    runs = _runs(study.workdir, NAME)
    parent = runs[runs["tags.ablate.kind"] == "launch"]
    children = runs[runs["tags.ablate.kind"] == "trial"]
    assert len(parent) == 1 and len(children) == 3  # the same runs continued, none added
    assert set(study.interrupted["run_id"]) <= set(runs["run_id"])
    assert sorted(children["tags.mlflow.runName"]) == ["cpm-s0", "cpm-s1", "cpm-s2"]
    assert (runs["status"] == "FINISHED").all() and (
        runs["tags.ablate.status"] == "completed"
    ).all()
    assert "tags.ablate.error" not in runs or runs["tags.ablate.error"].isna().all()

    client = MlflowClient(f"sqlite:///{study.workdir / 'mlflow.db'}")
    for run_id in runs["run_id"]:
        for key in client.get_run(run_id).data.metrics:
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            twice = [s for s, n in collections.Counter(steps).items() if n > 1]
            assert not twice, f"run {run_id}: '{key}' logged twice at steps {twice}"
        assert [m.step for m in client.get_metric_history(run_id, "loss")] in ([], [10, 20, 30, 40])


def test_the_mlflow_ui_is_given_the_study(study: SimpleNamespace) -> None:
    client = MlflowClient(f"sqlite:///{study.workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "mlflow.sharedViewState.ablate-study" in exp.tags
    runs = _runs(study.workdir, NAME)
    parent_id = runs[runs["tags.ablate.kind"] == "launch"]["run_id"].iloc[0]
    parent = client.get_run(parent_id)
    assert parent.data.tags["mlflow.note.content"].startswith(f"**Ablation study '{NAME}'")
    report = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/ablation_table.md", "report/ablation_table.html", "report/dashboard"} <= report
    for run in [parent, *(client.get_run(r) for r in runs["run_id"] if r != parent_id)]:
        tags = run.data.tags
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
        assert tags.get("mlflow.source.git.commit") == parent.data.tags.get(
            "mlflow.source.git.commit"
        )
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "tiny-seed0" and len(dataset.dataset.digest) == 16
        assert dataset.dataset.source_type == "ablate-simulator"
        assert [t.value for t in dataset.tags if t.key == "mlflow.data.context"] == ["training"]
        if run.info.run_id == parent_id:
            continue
        images = {
            a.path.split("/")[1].split("+")[0]
            for a in client.list_artifacts(run.info.run_id, "images")
        }
        assert {"test~input", "test~reference", "test~sample", "test~error"} <= images


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            return reply.read().decode().strip() == "OK"
    except OSError:
        return False


@pytest.fixture(scope="module")
def ui(study: SimpleNamespace) -> Iterator[SimpleNamespace]:
    """``ablate ui`` on the study's work directory."""
    port = _free_port()
    proc = _start(["ui", "--port", str(port)], study.folder, "ui.log")
    try:
        _wait(lambda: _health(port), 120, "MLflow UI answering /health", proc)
        (server,) = _children(proc.pid)  # the server, in a process group of its own
        yield SimpleNamespace(proc=proc, port=port, server_group=os.getpgid(server), study=study)
    finally:
        _kill_session(proc)


@needs_chromium
def test_chromium_shows_the_parent_its_children_and_metric_columns(
    ui: SimpleNamespace, tmp_path: Path
) -> None:
    printed = _text(ui.study.folder, "ui.log")
    link = re.search(rf"study '{NAME}': (\S+)", printed)
    assert link, printed
    url = link.group(1)
    assert url.endswith("viewStateShareKey=ablate-study&workflowType=machine_learning")
    dom = chromium_url(url, tmp_path, "--window-size=2200,900", "--dump-dom")
    parent = _runs(ui.study.workdir, NAME).query("`tags.ablate.kind` == 'launch'")
    assert parent["tags.mlflow.runName"].iloc[0] in dom
    for trial in ("cpm-s0", "cpm-s1", "cpm-s2"):
        assert trial in dom
    assert 'col-id="attributes.`Run Name`"' in dom  # the runs table, not a GenAI overview
    assert 'col-id="metrics.`psnr`"' in dom and 'col-id="params.`row`"' in dom
    shot = tmp_path / "mlflow-ui.png"
    chromium_url(
        url, tmp_path, "--window-size=2200,900", "--hide-scrollbars", f"--screenshot={shot}"
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (900, 2200) and pixels.std() > 10


def test_sigterm_to_ablate_ui_leaves_no_server_and_a_free_port(ui: SimpleNamespace) -> None:
    assert group_members(ui.server_group)  # uvicorn, job runner, huey workers...
    ui.proc.send_signal(signal.SIGTERM)
    assert ui.proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 40
    while group_members(ui.server_group) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert group_members(ui.server_group) == []
    assert not _health(ui.port)
    port = f"{ui.port:04X}"
    listeners = [
        line.split()[1]
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for line in Path(table).read_text().splitlines()[1:]
        if line.split()[3] == "0A" and line.split()[1].endswith(f":{port}")
    ]
    assert listeners == []
    with socket.socket() as sock:  # a new server can listen there (as uvicorn would)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", ui.port))
        sock.listen()


def test_two_first_launches_on_a_new_workdir_both_finish(tmp_path: Path) -> None:
    space = _space(tmp_path, "race", seeds=[0], steps=4)
    launches = [
        _start(["run", str(space), "--name", name], tmp_path, f"{name}.log")
        for name in ("first", "second")
    ]
    try:
        codes = [proc.wait(timeout=400) for proc in launches]
    finally:
        for proc in launches:
            _kill_session(proc)
    logs = {name: _text(tmp_path, f"{name}.log") for name in ("first", "second")}
    assert codes == [0, 0], {k: v[-2000:] for k, v in logs.items()}
    runs = _runs(tmp_path / "runs", "race")
    parents = runs[runs["tags.ablate.kind"] == "launch"]
    assert len(parents) == 2 and len(runs) == 4 and (runs["status"] == "FINISHED").all()
    assert "alembic" not in " ".join(logs.values())
