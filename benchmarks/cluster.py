"""The README's "On a Ray cluster" deployment on one machine, with the tools users run, for
``tests/integration/test_cluster.py`` and ``benchmarks/chaos.py``:

- PostgreSQL (the Debian package's ``initdb`` / ``postgres``) behind ``mlflow server`` with
  ``--artifacts-destination`` (the artifact proxy), bound to 127.0.0.1;
- a local S3-compatible server (moto's ``moto_server``) reached by the nodes and drivers
  through a :class:`TcpProxy` that can be cut (a storage outage; moto keeps the bucket in
  memory, so it must not be restarted), while :attr:`Cluster.s3` talks to moto directly;
- a Ray cluster started with its own CLI (``ray start --head``, ``ray start --address``),
  token authentication on (one token file, mode 0600, named by ``RAY_AUTH_TOKEN_PATH`` in
  every node's and the driver's environment), each node with its own temp dir, working
  directory and ``ABLATE_CACHE_DIR``: no folder is shared, checkpoints travel through the
  bucket.

Every process is started in its own process group (:class:`Deployment`) and stopped by it,
so whatever a server or a raylet forked goes with it; :func:`leftover_processes` finds any
that did not. The nodes and drivers import this checkout's ``ablate`` (its root leads
``PYTHONPATH``), also where another checkout of the project is installed editable.
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.launch.local_ray import SINGLE_NODE_ENV

#: The repository this module belongs to.
REPO = Path(__file__).resolve().parent.parent
BUCKET = "ablate-test"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bin(name: str) -> str | None:
    """PostgreSQL's ``name`` on PATH or in the Debian package's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    return None


def missing_tools() -> str | None:
    """Why this machine cannot run the deployment (a tool or a user it lacks), or None."""
    for tool in ("ray", "mlflow", "moto_server"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not on PATH (pip install -e '.[test]')"
    for tool in ("initdb", "postgres"):
        if pg_bin(tool) is None:
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


def wait(
    check: Callable[[], Any],
    what: str,
    timeout_s: float,
    procs: Iterable[subprocess.Popen] = (),
) -> Any:
    """Poll ``check`` until it returns something true (returned); fail fast, with the end of
    its log, when one of ``procs`` exits meanwhile, and after ``timeout_s``."""
    deadline = time.time() + timeout_s
    procs = list(procs)
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


def listening(port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:``port``."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def http_ok(url: str) -> bool:
    """``GET url`` answers 200."""
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    return False


def alive_nodes(env: dict[str, str]) -> int:
    """The Ray nodes alive in the cluster of ``env``'s ``RAY_ADDRESS`` (0 when unreachable),
    asked by a driver process of its own, as a user's would."""
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


class Deployment:
    """The processes of one deployment; each started in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.log: list[str] = []
        #: Every process group started, also those stopped since: where leftovers would be.
        self.groups: set[int] = set()
        self._lock = threading.Lock()

    def start(self, name: str, args: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``args`` as process ``name`` in a new session, its output in ``name.log``."""
        with open(self.root / f"{name}.log", "ab") as out:  # the child keeps its own copy
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )
        proc.log_path = self.root / f"{name}.log"  # type: ignore[attr-defined]
        with self._lock:
            self.procs[name] = proc
            self.groups.add(proc.pid)
            self.log.append(f"started {name} (pid {proc.pid}): {' '.join(args[:3])}")
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        """Signal process ``name``'s whole group, wait for it, then SIGKILL what is left."""
        with self._lock:
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
        with self._lock:
            self.log.append(f"stopped {name} (pid {proc.pid}, {signal.Signals(sig).name})")

    def stop_all(self) -> None:
        """Stop every process still running, the last started first."""
        for name in reversed(list(self.procs)):
            self.stop(name)


class TcpProxy:
    """A TCP relay on 127.0.0.1 to ``target_port`` that can be cut and restored: ``pause``
    closes the listening socket and drops every live connection (clients see refused and
    reset connections, as when an object store goes away); ``resume`` listens again on the
    same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()

    def resume(self) -> None:
        """Listen (again) and relay."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def pause(self) -> None:
        """Stop listening and drop every live connection."""
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


@dataclass
class Cluster:
    """A running deployment: what drivers need (``env`` holds ``RAY_ADDRESS``, the token and
    the S3 endpoint of the proxy) and the handles that break and mend it."""

    root: Path
    dep: Deployment
    env: dict[str, str]
    driver_dir: Path
    tracking_uri: str
    dashboard: str
    storage: str
    s3: Any
    s3_proxy: TcpProxy
    #: ``Deployment.start`` keyword arguments of the MLflow server (to start it again).
    mlflow_server: dict[str, Any]
    artifacts: Path
    gcs_port: int
    #: Node name (``head``, ``worker1``, ...) -> its home folder, of every node started (a
    #: stopped node's folder stays, with its cache); its process is ``ray_<name>``.
    nodes: dict[str, Path] = field(default_factory=dict)
    setup_s: float = 0.0

    def start_node(self, name: str, num_cpus: int = 1) -> subprocess.Popen:
        """``ray start --block`` node ``name`` (the head when ``name == "head"``) in a fresh
        home folder: a new machine, with an empty dataset cache."""
        home = self.root / name
        (home / "cache").mkdir(parents=True)
        self.nodes[name] = home
        args = [
            "ray",
            "start",
            "--block",
            f"--num-cpus={num_cpus}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={home / 'ray'}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
        ]
        if name == "head":
            args += [
                "--head",
                f"--port={self.gcs_port}",
                # the job server of `ray job submit` (token-authenticated HTTP)
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard.rpartition(':')[2]}",
            ]
        else:
            args += [f"--address=127.0.0.1:{self.gcs_port}"]
        env = {k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}
        return self.dep.start(
            f"ray_{name}", args, env={**env, "ABLATE_CACHE_DIR": str(home / "cache")}, cwd=home
        )

    def add_worker(self, num_cpus: int = 1) -> str:
        """Start a fresh worker node (``worker<N>``, N never reused); its name."""
        number = 1 + sum(name.startswith("worker") for name in self.nodes)
        name = f"worker{number}"
        self.start_node(name, num_cpus)
        return name

    def kill_node(self, name: str) -> None:
        """SIGKILL node ``name``'s process group: the raylet, its workers and trials."""
        self.dep.stop(f"ray_{name}", signal.SIGKILL)

    def running_workers(self) -> list[str]:
        """The worker nodes whose process group was started and not stopped."""
        return [name for name in self.nodes if name != "head" and f"ray_{name}" in self.dep.procs]

    def stop_mlflow(self) -> None:
        """Stop the tracking server (SIGTERM to its group: a restart, not a crash)."""
        self.dep.stop("mlflow_server")

    def start_mlflow(self, timeout_s: float = 120) -> None:
        """Start the tracking server on its port again and wait until it answers."""
        self.dep.start("mlflow_server", **self.mlflow_server)
        wait(
            lambda: http_ok(f"{self.tracking_uri}/health"),
            "mlflow server",
            timeout_s,
            [self.dep.procs["mlflow_server"]],
        )


@contextlib.contextmanager
def deploy(
    workers: int = 1, head_cpus: int = 1, prefix: str = "ablate-cluster-", keep: bool = False
) -> Iterator[Cluster]:
    """Start PostgreSQL, moto behind its proxy, ``mlflow server`` and a Ray head with
    ``workers`` worker nodes (one CPU each), and wait until every node is alive; stop all
    of it on exit, and delete its temp folder unless ``keep``."""
    import boto3

    root = Path(tempfile.mkdtemp(prefix=prefix))
    s3_proxy: TcpProxy | None = None
    dep = Deployment(root)
    started = time.perf_counter()
    env = dict(os.environ)
    # an in-process import of ablate.cli sets Ray's single-node switch (embedded runs only)
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_PROFILE", SINGLE_NODE_ENV):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
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
        pg_port = free_port()
        subprocess.run(
            [pg_bin("initdb"), "-D", str(pgdata), "-U", "mlflow", "-A", "trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            env={**env, "LC_ALL": "C.UTF-8"},
            **run_as,
        )
        dep.start(
            "postgres",
            [
                pg_bin("postgres"),
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
        wait(lambda: listening(pg_port), "postgres", 60, [dep.procs["postgres"]])

        # -- object storage (moto), behind the proxy ----------------------------------------
        s3_port = free_port()
        s3_proxy = TcpProxy(s3_port)
        aws = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_proxy.port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
        env.update(aws)
        dep.start("moto_server", ["moto_server", "-H", "127.0.0.1", "-p", str(s3_port)], env=env)
        wait(lambda: listening(s3_port), "moto_server", 60, [dep.procs["moto_server"]])
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
        mlflow_port = free_port()
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
        wait(
            lambda: http_ok(f"{tracking_uri}/health"),
            "mlflow server",
            120,
            [dep.procs["mlflow_server"]],
        )

        # -- Ray: head + workers, token auth, separate temp dirs and working dirs -----------
        token = root / "ray_auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        gcs_port = free_port()
        env["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"
        driver_dir = root / "driver"
        driver_dir.mkdir()
        cluster = Cluster(
            root=root,
            dep=dep,
            env=env,
            driver_dir=driver_dir,
            tracking_uri=tracking_uri,
            dashboard=f"http://127.0.0.1:{free_port()}",
            storage=f"s3://{BUCKET}/runs",
            s3=s3,
            s3_proxy=s3_proxy,
            mlflow_server=mlflow_server,
            artifacts=artifacts,
            gcs_port=gcs_port,
        )
        head = cluster.start_node("head", head_cpus)
        wait(lambda: listening(gcs_port), "ray head", 120, [head])
        for _ in range(workers):
            cluster.add_worker()
        wait(
            lambda: alive_nodes(env) == 1 + workers,
            f"{1 + workers} Ray nodes",
            120,
            list(dep.procs.values()),
        )
        cluster.setup_s = time.perf_counter() - started
        yield cluster
    finally:
        dep.stop_all()
        if s3_proxy is not None:
            s3_proxy.pause()
        print("\n".join(dep.log))
        print(f"cluster deployment: {time.perf_counter() - started:.0f} s in all")
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def leftover_processes(root: Path, groups: Iterable[int]) -> list[str]:
    """``pid command`` of each process still running that belongs to one of ``groups`` or
    names ``root`` in its command line or environment (a Ray worker renames itself
    ``ray::...``, and a process may leave its group, but not its environment)."""
    groups, marker = set(groups), str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            pgid = os.getpgid(int(entry.name))
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except (OSError, ProcessLookupError):  # gone meanwhile, or not ours to read
            continue
        if pgid in groups or marker in cmdline or marker in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append(f"{entry.name} {command[:160]}")
    return found
