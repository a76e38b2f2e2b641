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
preflight check takes. Every process the test starts it stops, by process group.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ablate.launch.local_ray import SINGLE_NODE_ENV
from tests.conftest import tiny_experiment

pytestmark = pytest.mark.slow

BUCKET = "ablate-test"
#: Seconds the object store is unreachable in the storage-outage launch.
OUTAGE_S = 15
ROWS = {"cpm": {"method": "coarse_to_fine"}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    return None


def _missing_tools() -> str | None:
    for tool in ("ray", "mlflow", "moto_server"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not on PATH (pip install -e '.[test]')"
    for tool in ("initdb", "postgres"):
        if _pg_bin(tool) is None:
            return f"PostgreSQL's '{tool}' not found (apt-get install postgresql)"
    try:
        import boto3  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[test]')"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run PostgreSQL as"
    return None


def _wait(check, what: str, timeout_s: float, procs: list[subprocess.Popen] = ()) -> Any:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        result = check()
        if result:
            return result
        for proc in procs:
            if proc.poll() is not None:
                log = getattr(proc, "log_path", None)
                tail = log.read_text(errors="replace")[-2000:] if log else ""
                raise AssertionError(
                    f"{what}: process {proc.args[0]} exited ({proc.returncode}): {tail}"
                )
        time.sleep(0.3)
    raise AssertionError(f"{what}: not ready within {timeout_s:.0f} s")


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _http_ok(url: str) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    return False


class Deployment:
    """The processes of one test deployment; each started in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.log: list[str] = []

    def start(self, name: str, args: list[str], **kwargs: Any) -> subprocess.Popen:
        out = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        proc.log_path = self.root / f"{name}.log"  # type: ignore[attr-defined]
        self.procs[name] = proc
        self.log.append(f"started {name} (pid {proc.pid}): {' '.join(args[:3])}")
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # whatever is left in the group (raylet workers, server workers)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.log.append(f"stopped {name} (pid {proc.pid}, {signal.Signals(sig).name})")

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


class TcpProxy:
    """A TCP relay on 127.0.0.1 to ``target_port`` that can be cut and restored: ``pause``
    closes the listening socket and drops every live connection (clients see refused and
    reset connections, as when an object store goes away); ``resume`` listens again on the
    same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = _free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()

    def resume(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def pause(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        for sock in [listener, *conns]:
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # paused
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # paused meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [])
                for src in readable:
                    data = src.recv(1 << 16)
                    if not data:
                        return
                    peer[src].sendall(data)
        except (OSError, ValueError):  # dropped by pause (ValueError: a closed socket)
            pass
        finally:
            with self._lock:
                self._conns -= {a, b}
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture(scope="module")
def deployment() -> Iterator[dict[str, Any]]:
    missing = _missing_tools()
    if missing:
        pytest.skip(f"cluster test: {missing}")
    import boto3

    root = Path(tempfile.mkdtemp(prefix="ablate-cluster-"))
    s3_proxy: TcpProxy | None = None
    dep = Deployment(root)
    started = time.perf_counter()
    env = dict(os.environ)
    # an in-process import of ablate.cli sets Ray's single-node switch (embedded runs only)
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_PROFILE", SINGLE_NODE_ENV):
        env.pop(key, None)
    try:
        # -- PostgreSQL, as a user of its own when we are root (postgres refuses root) ------
        pgdata, pgsock = root / "pg" / "data", root / "pg" / "sock"
        pgsock.mkdir(parents=True)
        run_as: dict[str, Any] = {"cwd": root / "pg"}
        if os.geteuid() == 0:
            run_as.update(user="postgres", group="postgres", extra_groups=[])
            root.chmod(0o711)  # postgres may pass through, not list or write
            for folder in (root / "pg", pgsock):
                shutil.chown(folder, "postgres", "postgres")
        pg_port = _free_port()
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(pgdata), "-U", "mlflow", "-A", "trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            env={**env, "LC_ALL": "C.UTF-8"},
            **run_as,
        )
        dep.start(
            "postgres",
            [
                _pg_bin("postgres"),
                "-D",
                str(pgdata),
                "-p",
                str(pg_port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={pgsock}",
            ],
            env=env,
            **run_as,
        )
        _wait(lambda: _listening(pg_port), "postgres", 60, [dep.procs["postgres"]])

        # -- object storage (moto) ----------------------------------------------------------
        s3_port = _free_port()
        # nodes and drivers reach moto through a proxy the test can cut (a storage outage:
        # moto keeps the bucket in memory, so it must not be restarted); the test's own
        # client talks to moto directly
        s3_proxy = TcpProxy(s3_port)
        aws = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_proxy.port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
        env.update(aws)
        dep.start("moto_server", ["moto_server", "-H", "127.0.0.1", "-p", str(s3_port)], env=env)
        _wait(lambda: _listening(s3_port), "moto_server", 60, [dep.procs["moto_server"]])
        s3_proxy.resume()
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{s3_port}",
            region_name=aws["AWS_REGION"],
            aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket=BUCKET)

        # -- MLflow server on PostgreSQL, artifacts proxied ---------------------------------
        mlflow_port = _free_port()
        artifacts = root / "mlflow-artifacts"
        mlflow_server = dict(
            args=[
                "mlflow",
                "server",
                "--backend-store-uri",
                f"postgresql+psycopg2://mlflow@127.0.0.1:{pg_port}/postgres",
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            env=dict(env),
            cwd=root,
        )
        dep.start("mlflow_server", **mlflow_server)
        tracking_uri = f"http://127.0.0.1:{mlflow_port}"
        _wait(
            lambda: _http_ok(f"{tracking_uri}/health"),
            "mlflow server",
            120,
            [dep.procs["mlflow_server"]],
        )

        # -- Ray: head + worker, token auth, separate temp dirs and working dirs ------------
        token = root / "ray_auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        gcs_port, dashboard_port = _free_port(), _free_port()
        nodes = {}
        for name in ("head", "worker"):
            home = root / name
            (home / "cache").mkdir(parents=True)
            nodes[name] = home
            args = [
                "ray",
                "start",
                "--block",
                "--num-cpus=1",
                "--node-ip-address=127.0.0.1",
                f"--temp-dir={home / 'ray'}",
                f"--dashboard-agent-listen-port={_free_port()}",
                "--disable-usage-stats",
            ]
            if name == "head":
                args += [
                    "--head",
                    f"--port={gcs_port}",
                    # the job server of `ray job submit` (token-authenticated HTTP)
                    "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard_port}",
                ]
            else:
                args += [f"--address=127.0.0.1:{gcs_port}"]
            dep.start(
                f"ray_{name}",
                args,
                env={**env, "ABLATE_CACHE_DIR": str(home / "cache")},
                cwd=home,
            )
            if name == "head":
                _wait(lambda: _listening(gcs_port), "ray head", 120, [dep.procs["ray_head"]])
        driver_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"}
        driver_dir = root / "driver"
        driver_dir.mkdir()
        _wait(lambda: _alive_nodes(driver_env) == 2, "two Ray nodes", 120, list(dep.procs.values()))
        yield {
            "root": root,
            "dep": dep,
            "env": driver_env,
            "driver_dir": driver_dir,
            "nodes": nodes,
            "tracking_uri": tracking_uri,
            "dashboard": f"http://127.0.0.1:{dashboard_port}",
            "storage": f"s3://{BUCKET}/runs",
            "s3": s3,
            "s3_proxy": s3_proxy,
            "mlflow_server": mlflow_server,
            "artifacts": artifacts,
            "setup_s": time.perf_counter() - started,
        }
    finally:
        dep.stop_all()
        if s3_proxy is not None:
            s3_proxy.pause()
        print("\n".join(dep.log))
        print(f"cluster deployment: {time.perf_counter() - started:.0f} s in all")
        shutil.rmtree(root, ignore_errors=True)


def _alive_nodes(env: dict[str, str]) -> int:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ray; ray.init(address='auto', logging_level='ERROR');"
            "print(sum(n['Alive'] for n in ray.nodes()))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stdout.strip().splitlines()
    return int(lines[-1]) if out.returncode == 0 and lines else 0


def _ablate(d: dict[str, Any], *args: str, **kwargs: Any) -> list[str]:
    return [sys.executable, "-m", "ablate.cli", *args]


def _checkpoints(d: dict[str, Any], name: str) -> set[str]:
    """Trial folders of launch ``name`` that hold a checkpoint in the bucket."""
    found = set()
    pages = d["s3"].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"runs/{name}/")
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


def _space(d: dict[str, Any], name: str, steps: int, seeds: list[int]) -> Path:
    raw = tiny_experiment(name, ROWS, seeds=seeds, max_failures=2)
    raw["train"].update({"steps": steps, "eval_every": 10, "log_every": 10})
    path = d["driver_dir"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cluster_recipe_survives_a_lost_node_and_a_lost_driver(deployment) -> None:
    d = deployment
    dep: Deployment = d["dep"]
    started = time.perf_counter()
    common = ["--address", "auto", "--storage", d["storage"], "--workdir", str(d["driver_dir"])]

    # -- preflight: a wrong tracking server is one line, in seconds, before anything runs ---
    bad = subprocess.run(
        _ablate(
            d,
            "run",
            str(_space(d, "preflight", 4, [0])),
            *common,
            "--tracking-uri",
            f"http://127.0.0.1:{_free_port()}",
        ),
        env=d["env"],
        cwd=d["driver_dir"],
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
        _ablate(d, "run", str(space), *common, "--tracking-uri", d["tracking_uri"]),
        env={**d["env"], "TUNE_GLOBAL_CHECKPOINT_S": "1"},
        cwd=d["driver_dir"],
    )
    # meanwhile, a driver holding the wrong token gets one line, not a traceback
    wrong = d["root"] / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    intruder = subprocess.Popen(
        _ablate(
            d,
            "run",
            str(_space(d, "intruder", 4, [0])),
            *common,
            "--tracking-uri",
            d["tracking_uri"],
        ),
        env={**d["env"], "RAY_AUTH_TOKEN_PATH": str(wrong)},
        cwd=d["driver_dir"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait(
        lambda: len(_checkpoints(d, "lost-node")) == 2, "a checkpoint of both trials", 300, [driver]
    )
    dep.stop("ray_worker", signal.SIGKILL)
    assert driver.wait(timeout=400) == 0, (d["root"] / "driver_1.log").read_text()[-3000:]
    dep.procs.pop("driver_1", None)
    out, err = intruder.communicate(timeout=120)
    assert intruder.returncode != 0
    _assert_token_line(out + err)
    assert not _checkpoints(d, "intruder")
    runs = _children(d["tracking_uri"], "lost-node")
    assert [run.info.run_name for run in runs] == ["cpm-s0", "cpm-s1"]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert all("psnr" in run.data.metrics for run in runs)
    # the trial of the lost node went on from its checkpoint: no step was trained twice from 0
    from mlflow import MlflowClient

    client = MlflowClient(d["tracking_uri"])
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert steps.count(10) == 1 and max(steps) == 60, (run.info.run_name, steps)
    # artifacts went through the server's proxy, not to a path of the driver
    assert all(uri.startswith("mlflow-artifacts:") for uri in (r.info.artifact_uri for r in runs))
    assert list(d["artifacts"].rglob("checkpoint")), "no artifact reached the server"
    # the launch record is in the bucket, nothing named 's3:' on the driver's disk
    d["s3"].head_object(Bucket=BUCKET, Key="runs/lost-node/ablate_launch.json")
    assert not list(d["driver_dir"].rglob("s3:"))
    # any machine with the storage URI finds the launch
    status = subprocess.run(
        _ablate(
            d,
            "status",
            "lost-node",
            "--storage",
            d["storage"],
            "--workdir",
            str(d["root"] / "elsewhere"),
        ),
        env=d["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0 and status.stdout.count("completed") == 2, status.stdout
    # each node rebuilt the dataset from its seed in its own cache
    for home in d["nodes"].values():
        assert list((home / "cache" / "datasets").glob("tiny-*/.content-sha256")), home

    # -- launch 2: the driver dies mid-launch; ablate resume finishes it --------------------
    space = _space(d, "lost-driver", 40, [0])
    driver = dep.start(
        "driver_2",
        _ablate(d, "run", str(space), *common, "--tracking-uri", d["tracking_uri"]),
        env={**d["env"], "TUNE_GLOBAL_CHECKPOINT_S": "1"},
        cwd=d["driver_dir"],
    )
    _wait(lambda: _checkpoints(d, "lost-driver"), "a checkpoint of launch 2", 300, [driver])
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
            d["storage"],
            "--workdir",
            str(d["root"] / "elsewhere"),
        ),
        env=d["env"],
        cwd=d["root"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    runs = _children(d["tracking_uri"], "lost-driver")
    assert [run.info.run_name for run in runs] == ["cpm-s0"]
    assert runs[0].info.status == "FINISHED"
    launches_s = time.perf_counter() - started
    print(f"cluster test: setup {d['setup_s']:.0f} s, launches {launches_s:.0f} s")


def _launch_wait(d: dict[str, Any], name: str, seeds: list[int], timeout_s: float = 300) -> None:
    """Start launch ``name`` (60 steps, a checkpoint every 10) as process ``driver_<name>``
    and return once every trial has a checkpoint in the bucket: the trials are mid-run."""
    common = ["--address", "auto", "--storage", d["storage"], "--workdir", str(d["driver_dir"])]
    driver = d["dep"].start(
        f"driver_{name}",
        _ablate(
            d, "run", str(_space(d, name, 60, seeds)), *common, "--tracking-uri", d["tracking_uri"]
        ),
        env={**d["env"], "TUNE_GLOBAL_CHECKPOINT_S": "1"},
        cwd=d["driver_dir"],
    )
    _wait(
        lambda: len(_checkpoints(d, name)) == len(seeds),
        f"checkpoints of {name}",
        timeout_s,
        [driver],
    )


def _elsewhere(d: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """``ablate ARGS`` run from a folder of its own, as on a machine that shares no disk."""
    return subprocess.run(
        _ablate(d, *args), env=d["env"], cwd=d["root"], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _driver_end(d: dict[str, Any], name: str, timeout_s: float = 400) -> tuple[int, str]:
    """Wait for the driver of launch ``name``; its exit code and output."""
    proc = d["dep"].procs.pop(f"driver_{name}")
    code = proc.wait(timeout=timeout_s)
    return code, (d["root"] / f"driver_{name}.log").read_text(errors="replace")


def _assert_complete(d: dict[str, Any], name: str, seeds: list[int]) -> None:
    """One FINISHED child per seed, with its test PSNR, and no (metric, step) logged twice."""
    from mlflow import MlflowClient

    runs = _children(d["tracking_uri"], name)
    assert [run.info.run_name for run in runs] == [f"cpm-s{seed}" for seed in seeds]
    client = MlflowClient(d["tracking_uri"])
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
    renders a cluster launch's table and dashboard."""
    d = deployment
    dep: Deployment = d["dep"]
    started = time.perf_counter()

    # -- the object store goes away mid-trial, then comes back --------------------------------
    _launch_wait(d, "outage", [0, 1])
    d["s3_proxy"].pause()
    time.sleep(OUTAGE_S)
    d["s3_proxy"].resume()
    code, out = _driver_end(d, "outage")
    assert code == 0, out[-3000:]
    _assert_complete(d, "outage", [0, 1])

    # -- another machine: table, dashboard and export of that launch, from the bucket ------
    elsewhere = ["--storage", d["storage"], "--workdir", str(d["root"] / "elsewhere")]
    table = _elsewhere(d, "table", "outage", "--format", "csv", *elsewhere)
    assert table.returncode == 0 and "cpm" in table.stdout, table.stdout + table.stderr
    uri = ["--tracking-uri", d["tracking_uri"]]
    board = _elsewhere(d, "dashboard", "outage", *elsewhere, *uri)
    assert board.returncode == 0, board.stdout + board.stderr
    assert (d["root"] / "elsewhere" / "dashboards" / "outage" / "index.html").is_file()
    exported = _elsewhere(d, "export", "outage", *elsewhere)  # the record names the server
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert f"--tracking-uri {d['tracking_uri']}" in exported.stdout, exported.stdout
    assert (d["root"] / "elsewhere" / "exports" / "outage" / "MLmodel").is_file()

    # -- the tracking server restarts mid-trial ---------------------------------------------
    _launch_wait(d, "tracking-restart", [0])
    down = time.time()
    dep.stop("mlflow_server")
    time.sleep(10)
    dep.start("mlflow_server", **d["mlflow_server"])
    _wait(
        lambda: _http_ok(f"{d['tracking_uri']}/health"),
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

    client = MlflowClient(d["tracking_uri"])
    run = _children(d["tracking_uri"], "tracking-restart")[0]
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


def test_a_wrong_or_missing_token_is_one_line_in_seconds(deployment) -> None:
    """A driver with the wrong token, and one on a fresh machine (no RAY_AUTH_MODE, no
    RAY_AUTH_TOKEN_PATH, no ~/.ray/auth_token), each fail in one line naming the fix, about
    as fast as a driver failing at its first preflight check (a wrong tracking URI): Ray's
    own 20 connection attempts a second apart would add 20 s or more."""
    d = deployment
    wrong = d["root"] / "wrong_token_2"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    home = d["root"] / "tokenless-home"
    home.mkdir()
    tokenless = {k: v for k, v in d["env"].items() if not k.startswith("RAY_AUTH_")}
    cases = {
        "reference": (d["env"], f"http://127.0.0.1:{_free_port()}"),
        "wrong token": ({**d["env"], "RAY_AUTH_TOKEN_PATH": str(wrong)}, d["tracking_uri"]),
        "no token": ({**tokenless, "HOME": str(home)}, d["tracking_uri"]),
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
                *("--address", env["RAY_ADDRESS"], "--storage", d["storage"]),
                *("--tracking-uri", tracking_uri, "--workdir", str(d["driver_dir"])),
            ),
            env=env,
            cwd=d["driver_dir"],
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
    port = int(d["dashboard"].rpartition(":")[2])
    _wait(lambda: _listening(port), "the Ray job server", 120)
    submit_dir = d["root"] / "submit"
    submit_dir.mkdir()
    shutil.move(_space(d, "submitted", 10, [0]), submit_dir / "submitted.yaml")
    job = ["ray", "job", "submit", "--address", d["dashboard"], "--submission-id", "ablate-1"]
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
            d["storage"],
            "--tracking-uri",
            d["tracking_uri"],
        ],
        env=d["env"],
        cwd=d["root"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    status = subprocess.run(
        ["ray", "job", "status", "--address", d["dashboard"], "ablate-1"],
        env=d["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Job 'ablate-1' succeeded" in status.stdout, status.stdout + status.stderr
    runs = _children(d["tracking_uri"], "submitted")
    assert [(run.info.run_name, run.info.status) for run in runs] == [("cpm-s0", "FINISHED")]
    d["s3"].head_object(Bucket=BUCKET, Key="runs/submitted/ablate_launch.json")
    # the job server takes the same token: another one is refused
    wrong = d["root"] / "wrong_job_token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    refused = subprocess.run(
        ["ray", "job", "list", "--address", d["dashboard"]],
        env={**d["env"], "RAY_AUTH_TOKEN_PATH": str(wrong)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "ablate-1" not in refused.stdout, refused.stdout
    print(f"ray job submit: {time.perf_counter() - started:.0f} s")
