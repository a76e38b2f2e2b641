"""The README's "On a Ray cluster" recipe, on one machine, with the tools users run:

- a Ray cluster started with its own CLI (``ray start --head``, ``ray start --address``),
  two nodes with separate temp dirs and working directories, token authentication on
  (one token file, mode 0600, named by ``RAY_AUTH_TOKEN_PATH`` in every node's and the
  driver's environment);
- PostgreSQL (the Debian package's ``initdb`` / ``postgres``) behind ``mlflow server`` with
  ``--artifacts-destination`` (the artifact proxy), bound to 127.0.0.1;
- a local S3-compatible server (moto's ``moto_server``) as ``--storage s3://...``; no
  folder is shared between the nodes and the driver: each node rebuilds the dataset in its
  own ``ABLATE_CACHE_DIR`` and checkpoints travel through the object store.

Then ``ablate run --address auto`` in a driver process: the worker node is killed mid-trial
and the trial resumes from its checkpoint in the bucket (one FINISHED child run per
(row, seed)); a second launch's driver is killed mid-launch and ``ablate resume NAME
--storage s3://...`` finishes it. A launch submitted with ``ray job submit --working-dir``
to the head's job server (the dashboard, on 127.0.0.1, same token) runs there. Drivers with a
wrong token and with none fail in one line, in about the time a driver failing at its first
preflight check takes. Every process the test starts it stops, by process group. The
deployment itself is :func:`benchmarks.cluster.deploy` (``benchmarks/chaos.py`` breaks the
same one on a schedule).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.cluster import (
    BUCKET,
    Cluster,
    Deployment,
    deploy,
    free_port,
    http_ok,
    listening,
    missing_tools,
    wait,
)
from tests.conftest import tiny_experiment

pytestmark = pytest.mark.slow

#: Seconds the object store is unreachable in the storage-outage launch.
OUTAGE_S = 15
#: Seconds the object store is unreachable in the long-outage launch: longer than MLflow's
#: and pyarrow's own retries, shorter than a launch's ``outage_wait_s`` (15 min).
LONG_OUTAGE_S = 360
ROWS = {"cpm": {"method": "coarse_to_fine"}}


@pytest.fixture(scope="module")
def deployment() -> Iterator[Cluster]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"cluster test: {missing}")
    with deploy(workers=1) as cluster:
        yield cluster


def _ablate(d: Cluster, *args: str, **kwargs: Any) -> list[str]:
    return [sys.executable, "-m", "ablate.cli", *args]


def _checkpoints(d: Cluster, name: str) -> set[str]:
    """Trial folders of launch ``name`` that hold a checkpoint in the bucket."""
    found = set()
    pages = d.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"runs/{name}/")
    for page in pages:
        for item in page.get("Contents", []):
            parts = item["Key"].split("/")
            if len(parts) > 3 and parts[3].startswith("checkpoint_"):
                found.add(parts[2])
    return found


def _children(tracking_uri: str, experiment: str) -> list[Any]:
    """The trial runs of an experiment on the server, sorted by run name."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], filter_string="tags.`ablate.kind` = 'trial'")
    return sorted(runs, key=lambda run: run.info.run_name)


#: A wrong or missing token costs a driver at most this much more than failing at its first
#: preflight check does (one GCS call; Ray's own retries sleep 20 s). Relative, because the
#: imports alone take 4 to 20 s depending on the machine's load.
TOKEN_EXTRA_S = 8


def _assert_token_line(output: str) -> None:
    """The driver's whole output is one line that names the token fix."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "RAY_AUTH_TOKEN_PATH=" in lines[0], output
    assert lines[0].startswith("error: Ray token rejected or missing"), output


def _space(d: Cluster, name: str, steps: int, seeds: list[int]) -> Path:
    raw = tiny_experiment(name, ROWS, seeds=seeds, max_failures=2)
    raw["train"].update({"steps": steps, "eval_every": 10, "log_every": 10})
    path = d.driver_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cluster_recipe_survives_a_lost_node_and_a_lost_driver(deployment) -> None:
    d = deployment
    dep: Deployment = d.dep
    started = time.perf_counter()
    common = ["--address", "auto", "--storage", d.storage, "--workdir", str(d.driver_dir)]

    # -- preflight: a wrong tracking server is one line, in seconds, before anything runs ---
    bad = subprocess.run(
        _ablate(
            d,
            "run",
            str(_space(d, "preflight", 4, [0])),
            *common,
            "--tracking-uri",
            f"http://127.0.0.1:{free_port()}",
        ),
        env=d.env,
        cwd=d.driver_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0
    assert "cannot reach the MLflow tracking server" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr

    # -- launch 1: the worker node dies mid-trial ------------------------------------------
    space = _space(d, "lost-node", 60, [0, 1])
    driver = dep.start(
        "driver_1",
        _ablate(d, "run", str(space), *common, "--tracking-uri", d.tracking_uri),
        env={**d.env, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
        cwd=d.driver_dir,
    )
    # meanwhile, a driver holding the wrong token gets one line, not a traceback
    wrong = d.root / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    intruder = subprocess.Popen(
        _ablate(
            d,
            "run",
            str(_space(d, "intruder", 4, [0])),
            *common,
            "--tracking-uri",
            d.tracking_uri,
        ),
        env={**d.env, "RAY_AUTH_TOKEN_PATH": str(wrong)},
        cwd=d.driver_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait(
        lambda: len(_checkpoints(d, "lost-node")) == 2, "a checkpoint of both trials", 300, [driver]
    )
    d.kill_node("worker1")
    assert driver.wait(timeout=400) == 0, (d.root / "driver_1.log").read_text()[-3000:]
    dep.procs.pop("driver_1", None)
    out, err = intruder.communicate(timeout=120)
    assert intruder.returncode != 0
    _assert_token_line(out + err)
    assert not _checkpoints(d, "intruder")
    runs = _children(d.tracking_uri, "lost-node")
    assert [run.info.run_name for run in runs] == ["cpm-s0", "cpm-s1"]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert all("psnr" in run.data.metrics for run in runs)
    # the trial of the lost node went on from its checkpoint: no step was trained twice from 0
    from mlflow import MlflowClient

    client = MlflowClient(d.tracking_uri)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert steps.count(10) == 1 and max(steps) == 60, (run.info.run_name, steps)
    # artifacts went through the server's proxy, not to a path of the driver
    assert all(uri.startswith("mlflow-artifacts:") for uri in (r.info.artifact_uri for r in runs))
    assert list(d.artifacts.rglob("checkpoint")), "no artifact reached the server"
    # the launch record is in the bucket, nothing named 's3:' on the driver's disk
    d.s3.head_object(Bucket=BUCKET, Key="runs/lost-node/ablate_launch.json")
    assert not list(d.driver_dir.rglob("s3:"))
    # any machine with the storage URI finds the launch
    status = subprocess.run(
        _ablate(
            d,
            "status",
            "lost-node",
            "--storage",
            d.storage,
            "--workdir",
            str(d.root / "elsewhere"),
        ),
        env=d.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0 and status.stdout.count("completed") == 2, status.stdout
    # each node rebuilt the dataset from its seed in its own cache
    for home in d.nodes.values():
        assert list((home / "cache" / "datasets").glob("tiny-*/.content-sha256")), home

    # -- launch 2: the driver dies mid-launch; ablate resume finishes it --------------------
    space = _space(d, "lost-driver", 40, [0])
    driver = dep.start(
        "driver_2",
        _ablate(d, "run", str(space), *common, "--tracking-uri", d.tracking_uri),
        env={**d.env, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
        cwd=d.driver_dir,
    )
    wait(lambda: _checkpoints(d, "lost-driver"), "a checkpoint of launch 2", 300, [driver])
    time.sleep(2)  # let the driver save the experiment state naming it
    dep.stop("driver_2", signal.SIGKILL)
    resumed = subprocess.run(
        _ablate(
            d,
            "resume",
            "lost-driver",
            "--address",
            "auto",
            "--storage",
            d.storage,
            "--workdir",
            str(d.root / "elsewhere"),
        ),
        env=d.env,
        cwd=d.root,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    runs = _children(d.tracking_uri, "lost-driver")
    assert [run.info.run_name for run in runs] == ["cpm-s0"]
    assert runs[0].info.status == "FINISHED"
    launches_s = time.perf_counter() - started
    print(f"cluster test: setup {d.setup_s:.0f} s, launches {launches_s:.0f} s")


def _launch_wait(d: Cluster, name: str, seeds: list[int], timeout_s: float = 300) -> None:
    """Start launch ``name`` (60 steps, a checkpoint every 10) as process ``driver_<name>``
    and return once every trial has a checkpoint in the bucket: the trials are mid-run."""
    common = ["--address", "auto", "--storage", d.storage, "--workdir", str(d.driver_dir)]
    driver = d.dep.start(
        f"driver_{name}",
        _ablate(
            d, "run", str(_space(d, name, 60, seeds)), *common, "--tracking-uri", d.tracking_uri
        ),
        env={**d.env, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
        cwd=d.driver_dir,
    )
    wait(
        lambda: len(_checkpoints(d, name)) == len(seeds),
        f"checkpoints of {name}",
        timeout_s,
        [driver],
    )


def _elsewhere(d: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``ablate ARGS`` run from a folder of its own, as on a machine that shares no disk."""
    return subprocess.run(
        _ablate(d, *args), env=d.env, cwd=d.root, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _driver_end(d: Cluster, name: str, timeout_s: float = 400) -> tuple[int, str]:
    """Wait for the driver of launch ``name``; its exit code and output."""
    proc = d.dep.procs.pop(f"driver_{name}")
    code = proc.wait(timeout=timeout_s)
    return code, (d.root / f"driver_{name}.log").read_text(errors="replace")


def _assert_complete(d: Cluster, name: str, seeds: list[int]) -> None:
    """One FINISHED child per seed, with its test PSNR, and no (metric, step) logged twice."""
    from mlflow import MlflowClient

    runs = _children(d.tracking_uri, name)
    assert [run.info.run_name for run in runs] == [f"cpm-s{seed}" for seed in seeds]
    client = MlflowClient(d.tracking_uri)
    for run in runs:
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags)
        assert "psnr" in run.data.metrics, run.info.run_name
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.info.run_name, key, steps)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert max(steps) == 60, (run.info.run_name, steps)


def test_cluster_survives_a_storage_outage_and_a_tracking_server_restart(deployment) -> None:
    """Faults a launch must survive without losing anything: the object store unreachable
    for 15 s mid-trial (the trials wait for it and go on), the tracking server restarted
    mid-trial (MLflow's client retries). And a machine holding only the storage URI
    renders a cluster launch's table and dashboard and exports its best trial, with no
    ``--tracking-uri``: the launch record names the server."""
    d = deployment
    dep: Deployment = d.dep
    started = time.perf_counter()

    # -- the object store goes away mid-trial, then comes back --------------------------------
    _launch_wait(d, "outage", [0, 1])
    d.s3_proxy.pause()
    time.sleep(OUTAGE_S)
    d.s3_proxy.resume()
    code, out = _driver_end(d, "outage")
    assert code == 0, out[-3000:]
    _assert_complete(d, "outage", [0, 1])

    # -- another machine: table, dashboard and export of that launch, from the bucket ------
    elsewhere = ["--storage", d.storage, "--workdir", str(d.root / "elsewhere")]
    table = _elsewhere(d, "table", "outage", "--format", "csv", *elsewhere)
    assert table.returncode == 0 and "cpm" in table.stdout, table.stdout + table.stderr
    board = _elsewhere(d, "dashboard", "outage", *elsewhere)  # the record names the server
    assert board.returncode == 0, board.stdout + board.stderr
    assert (d.root / "elsewhere" / "dashboards" / "outage" / "index.html").is_file()
    exported = _elsewhere(d, "export", "outage", *elsewhere)  # the record names the server
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert f"--tracking-uri {d.tracking_uri}" in exported.stdout, exported.stdout
    assert (d.root / "elsewhere" / "exports" / "outage" / "MLmodel").is_file()

    # -- the tracking server restarts mid-trial ---------------------------------------------
    _launch_wait(d, "tracking-restart", [0])
    down = time.time()
    dep.stop("mlflow_server")
    time.sleep(10)
    dep.start("mlflow_server", **d.mlflow_server)
    wait(
        lambda: http_ok(f"{d.tracking_uri}/health"),
        "mlflow server again",
        120,
        [dep.procs["mlflow_server"]],
    )
    up = time.time()
    code, out = _driver_end(d, "tracking-restart")
    assert code == 0, out[-3000:]
    _assert_complete(d, "tracking-restart", [0])
    # a metric stamped while the server was down reached it: a call was retried, not lost
    from mlflow import MlflowClient

    client = MlflowClient(d.tracking_uri)
    run = _children(d.tracking_uri, "tracking-restart")[0]
    stamps = [
        m.timestamp / 1000
        for key in run.data.metrics
        for m in client.get_metric_history(run.info.run_id, key)
    ]
    assert any(down <= t <= up for t in stamps), (down, up, sorted(stamps))
    print(
        f"faults test: tracking server down {up - down:.0f} s; "
        f"{time.perf_counter() - started:.0f} s in all"
    )


def test_a_trial_waits_out_its_object_store_down_for_six_minutes(deployment) -> None:
    """The object store cut for :data:`LONG_OUTAGE_S` once the trial has a checkpoint in it:
    the trial pauses at its next checkpoint upload (it does not fail: no retry, no error
    tag) and finishes once the store is back, every (metric, step) once; the driver, whose
    experiment-state saves fail meanwhile, exits 0."""
    d = deployment
    _launch_wait(d, "long-outage", [0])
    d.s3_proxy.pause()
    down = time.time()
    time.sleep(LONG_OUTAGE_S)
    d.s3_proxy.resume()
    up = time.time()
    code, out = _driver_end(d, "long-outage", timeout_s=900)
    assert code == 0, out[-3000:]
    _assert_complete(d, "long-outage", [0])
    (run,) = _children(d.tracking_uri, "long-outage")
    assert "ablate.error" not in run.data.tags, run.data.tags
    # no attempt of the trial failed: Ray writes a failed attempt's error.txt to its folder
    keys = [
        item["Key"]
        for page in d.s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="runs/long-outage/"
        )
        for item in page.get("Contents", [])
    ]
    assert keys and not [key for key in keys if key.endswith("error.txt")], keys
    print(f"object store down {up - down:.0f} s: the trial waited and finished")


def test_a_wrong_or_missing_token_is_one_line_in_seconds(deployment) -> None:
    """A driver with the wrong token, and one on a fresh machine (no RAY_AUTH_MODE, no
    RAY_AUTH_TOKEN_PATH, no ~/.ray/auth_token), each fail in one line naming the fix, about
    as fast as a driver failing at its first preflight check (a wrong tracking URI): Ray's
    own 20 connection attempts a second apart would add 20 s or more."""
    d = deployment
    wrong = d.root / "wrong_token_2"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    home = d.root / "tokenless-home"
    home.mkdir()
    tokenless = {k: v for k, v in d.env.items() if not k.startswith("RAY_AUTH_")}
    cases = {
        "reference": (d.env, f"http://127.0.0.1:{free_port()}"),
        "wrong token": ({**d.env, "RAY_AUTH_TOKEN_PATH": str(wrong)}, d.tracking_uri),
        "no token": ({**tokenless, "HOME": str(home)}, d.tracking_uri),
    }
    space = str(_space(d, "tokens", 4, [0]))
    took = {}
    for case, (env, tracking_uri) in cases.items():
        started = time.perf_counter()
        out = subprocess.run(
            _ablate(
                d,
                "run",
                space,
                *("--address", env["RAY_ADDRESS"], "--storage", d.storage),
                *("--tracking-uri", tracking_uri, "--workdir", str(d.driver_dir)),
            ),
            env=env,
            cwd=d.driver_dir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        took[case] = time.perf_counter() - started
        assert out.returncode != 0, case
        if case != "reference":
            _assert_token_line(out.stdout + out.stderr)
    print("token errors: " + ", ".join(f"{case} {s:.1f} s" for case, s in took.items()))
    for case in ("wrong token", "no token"):
        assert took[case] < took["reference"] + TOKEN_EXTRA_S, took
    assert not _checkpoints(d, "tokens")


def test_ray_job_submit_runs_a_launch_on_the_head(deployment) -> None:
    """The laptop form of the recipe: `ray job submit` to the head's job server, the search
    space uploaded as the job's working directory, the driver run on the head."""
    d = deployment
    port = int(d.dashboard.rpartition(":")[2])
    wait(lambda: listening(port), "the Ray job server", 120)
    submit_dir = d.root / "submit"
    submit_dir.mkdir()
    shutil.move(_space(d, "submitted", 10, [0]), submit_dir / "submitted.yaml")
    job = ["ray", "job", "submit", "--address", d.dashboard, "--submission-id", "ablate-1"]
    driver = [sys.executable, "-m", "ablate.cli", "run", "submitted.yaml", "--address", "auto"]
    started = time.perf_counter()
    submitted = subprocess.run(
        [
            *job,
            "--working-dir",
            str(submit_dir),
            "--",
            *driver,
            "--storage",
            d.storage,
            "--tracking-uri",
            d.tracking_uri,
        ],
        env=d.env,
        cwd=d.root,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    status = subprocess.run(
        ["ray", "job", "status", "--address", d.dashboard, "ablate-1"],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Job 'ablate-1' succeeded" in status.stdout, status.stdout + status.stderr
    runs = _children(d.tracking_uri, "submitted")
    assert [(run.info.run_name, run.info.status) for run in runs] == [("cpm-s0", "FINISHED")]
    d.s3.head_object(Bucket=BUCKET, Key="runs/submitted/ablate_launch.json")
    # the job server takes the same token: another one is refused
    wrong = d.root / "wrong_job_token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    refused = subprocess.run(
        ["ray", "job", "list", "--address", d.dashboard],
        env={**d.env, "RAY_AUTH_TOKEN_PATH": str(wrong)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "ablate-1" not in refused.stdout, refused.stdout
    print(f"ray job submit: {time.perf_counter() - started:.0f} s")
