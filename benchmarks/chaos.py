"""Chaos: does a grid launch on a cluster lose, duplicate or double-log anything when its
parts fail on a seeded schedule?

    python benchmarks/chaos.py --seed 1             # 20 trials x 300 steps, outages of minutes
    python benchmarks/chaos.py --seed 1 --short     # the CI form: 4 trials, ~5 min in all
    python benchmarks/chaos.py --seed 1 --scale 0.2 # the full grid, outages 5x shorter

The deployment is ``benchmarks/cluster.py``'s (the README's cluster recipe on one machine): a
Ray head without CPUs and two worker nodes of one CPU each (every trial runs on a node that
can be killed), token auth, PostgreSQL behind ``mlflow server``, moto S3 behind a proxy that
can be cut, ``--storage s3://BUCKET/runs`` and no shared disk. The workload is one tiny
coarse-to-fine row x ``--trials`` seeds, ``--steps`` steps each, logging every 10 steps and
validating (and checkpointing) every 25 (the two schedules cross), ``max_failures: 3``.

1. **Reference**: the grid undisturbed, as launch ``reference``: the (metric, step) points
   each trial (by run name, ``cpm-s3``) logs when nothing fails.
2. **Schedule**: drawn from ``random.Random(seed)`` and printed before the chaos launch; the
   same seed gives the same schedule. One fault of each kind (and ``extra`` more of random
   kinds in the full form):

   - ``kill_worker``: SIGKILL a worker node's process group (raylet, workers, its trials),
     a fresh worker node (a new machine: empty cache) started a few seconds later;
   - ``kill_driver``: SIGKILL the driver; ``ablate resume NAME`` becomes the driver;
   - ``mlflow_down``: the tracking server stopped for 1 to 8 minutes (``--short``: 60-90 s),
     then started again on its port;
   - ``s3_cut``: the proxy to the object store cut for 10 s to 6 minutes (``--short``:
     20-40 s), then restored.

   Faults fire at a share of the grid's progress, not at a time: progress is the share of
   the trials' checkpointed reports found in the bucket (each trial reports ``validations``
   times, each with a checkpoint), so a slow machine or a stalled launch moves every fault
   with it and the launch cannot end before a fault's share is reached; the shares are
   spread evenly (one random share per equal slice of 10-80 % of the grid, 10-75 % in the
   short form). ``--scale`` multiplies every outage's length. One fault (of
   another kind) is instead an overlap: it fires a random 20-70 % into an outage. A fault
   still pending when the launch ends is reported as skipped; an outage still running then
   is ended (``cut short``) so that the stores can be read.
3. **Chaos launch** ``chaos``, run as a user would: when the driver exits nonzero the harness
   waits for the outages it knows of to end (and 10 s more) and runs ``ablate resume NAME``
   (at most ``--max-resumes`` times); after ``kill_driver`` it resumes at once (not
   counted). ``kill_driver`` when no driver runs waits for the next one.
4. **Verdict**, read from MLflow (an ``MlflowClient`` on the tracking server) and from the
   bucket (moto directly, not through the proxy), after the deployment is stopped for the
   process check. Targets: every trial FINISHED, no duplicate trial runs (two runs of one
   run name or trial id), no (metric, step) point logged twice, no point missing compared
   with the reference (per run name; ``train_it_per_s`` is the rate of a trial's last
   session and is not logged by a session that trains no step: counted apart, no target),
   the launch's last exit 0, no process of the deployment left running. Partial checkpoint
   folders (``checkpoint_*`` without the trainable's ``state.pt``) are reported, not a
   target: an upload cut midway by Ray leaves its folder in the bucket, unreferenced (the
   README's storage-outage note), and it costs nothing but space.

Exit 0 only when every target is met. Writes ``benchmarks/results/chaos-<seed>.json``
(``chaos-short-<seed>.json``): the schedule as planned and as executed (seconds after the
chaos launch started), wall times, each driver's exit and last lines, the verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.cluster import (  # noqa: E402
    BUCKET,
    Cluster,
    deploy,
    leftover_processes,
    missing_tools,
)
from tests.scale import TINY_MODEL  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("kill_worker", "kill_driver", "mlflow_down", "s3_cut")
OUTAGES = ("mlflow_down", "s3_cut")
#: Metrics of a trial's last session only (see the module docstring).
PER_SESSION = frozenset({"train_it_per_s"})
ROW = "cpm"
#: Seconds between two looks at the grid's progress in the bucket.
POLL_S = 2.0
#: Seconds the harness, as a user reading why a driver failed, waits before resuming.
RESUME_PAUSE_S = 10.0
#: Lines of a driver's output kept in the record.
TAIL_LINES = 12
#: Ray Tune's line for a failure of a trial, retried or not (its run name and trial id).
FAILED = re.compile(r"^Trial (\S+)-[0-9a-f]+_\d+ errored after ")
#: The exception of a failed trial task in Ray Tune's traceback: ``ray.exceptions.X`` or,
#: raised by the trainable, ``ray.exceptions.RayTaskError(X)``.
CAUSE = re.compile(r"^ray\.exceptions\.(\w+)(?:\((\w+)\))?: ")


@dataclass(frozen=True)
class Form:
    """The workload and the fault ranges of one form of the benchmark (full or short)."""

    trials: int
    steps: int
    #: Faults beyond one of each kind, of random kinds.
    extra: int
    mlflow_down_s: tuple[float, float]
    s3_cut_s: tuple[float, float]
    #: Seconds from a worker's death to the start of a fresh one.
    restart_s: tuple[float, float]
    #: The slice of the grid's progress the faults are spread over.
    window: tuple[float, float]
    #: The chaos launch is given up (its driver killed) after this many seconds.
    timeout_s: float
    log_every: int = 10
    #: Not a multiple of ``log_every``: a validation cuts a log window short.
    eval_every: int = 25
    max_failures: int = 3


FULL = Form(
    trials=20,
    steps=300,
    extra=2,
    mlflow_down_s=(60, 480),
    s3_cut_s=(10, 360),
    restart_s=(3, 10),
    window=(0.1, 0.8),
    timeout_s=3600,
)
SHORT = Form(
    trials=4,
    steps=300,
    extra=0,
    mlflow_down_s=(60, 90),
    s3_cut_s=(20, 40),
    restart_s=(3, 6),
    window=(0.1, 0.75),
    timeout_s=420,
)


@dataclass
class Fault:
    """One fault as planned and, once it ran, as executed (seconds after the launch's start)."""

    index: int
    kind: str
    #: The grid's progress (0-1) it fires at, or None for an overlap...
    at_progress: float | None
    #: ...which fires ``offset_s`` after fault ``host`` started.
    host: int | None = None
    offset_s: float | None = None
    #: The outage's length, or for ``kill_worker`` the seconds before a fresh worker.
    duration_s: float = 0.0
    #: ``kill_worker``: which running worker (index into their sorted names, modulo).
    target: int = 0
    status: str = "planned"
    started_s: float | None = None
    ended_s: float | None = None
    progress: float | None = None
    detail: str = ""

    def trigger(self) -> str:
        if self.at_progress is None:
            return f"fault {self.host} + {self.offset_s:.0f} s (overlap)"
        return f"at {self.at_progress:.0%} of the grid"

    def length(self) -> str:
        if self.kind in OUTAGES:
            return f"{self.duration_s:.0f} s down"
        if self.kind == "kill_worker":
            return f"fresh worker after {self.duration_s:.0f} s"
        return "resume at once"


def plan(rng: random.Random, form: Form, scale: float) -> list[Fault]:
    """The seeded schedule: one fault of each kind plus ``form.extra``, one of them made an
    overlap of an outage, the others at progress shares spread over ``form.window``."""
    kinds = list(KINDS) + [rng.choice(KINDS) for _ in range(form.extra)]
    rng.shuffle(kinds)
    faults = []
    for index, kind in enumerate(kinds, start=1):
        fault = Fault(index=index, kind=kind, at_progress=None, target=rng.randrange(2))
        if kind == "mlflow_down":
            fault.duration_s = rng.uniform(*form.mlflow_down_s) * scale
        elif kind == "s3_cut":
            fault.duration_s = rng.uniform(*form.s3_cut_s) * scale
        elif kind == "kill_worker":
            fault.duration_s = rng.uniform(*form.restart_s)
        faults.append(fault)
    host = rng.choice([f for f in faults if f.kind in OUTAGES])
    guest = rng.choice([f for f in faults if f.kind != host.kind and f is not host])
    guest.host, guest.offset_s = host.index, rng.uniform(0.2, 0.7) * host.duration_s
    timed = [f for f in faults if f is not guest]
    low, high = form.window
    width = (high - low) / len(timed)
    for slot, fault in enumerate(timed):
        fault.at_progress = round(low + width * (slot + rng.random()), 3)
    # numbered in firing order: the overlap right after its host
    faults.sort(key=lambda f: (host.at_progress if f is guest else f.at_progress, f is guest))
    renumber = {f.index: number for number, f in enumerate(faults, start=1)}
    for f in faults:
        f.index, f.host = renumber[f.index], f.host and renumber[f.host]
    return faults


def experiment(name: str, form: Form, trials: int, steps: int) -> dict[str, Any]:
    """The grid's experiment YAML (as a dict): one tiny row x ``trials`` seeds."""
    return {
        "name": name,
        "rows": {ROW: {"method": "coarse_to_fine"}},
        "seeds": list(range(trials)),
        "data": {"preset": "tiny"},
        "model": {"coarse_to_fine": TINY_MODEL["coarse_to_fine"]},
        "diffusion": {"train_steps": 100, "irm": {"sample_steps": 3}, "ams_samples": 3},
        "train": {
            "steps": steps,
            "batch_size": 2,
            "log_every": form.log_every,
            "eval_every": form.eval_every,
            "eval_slices": 4,
        },
        "resources": {"cpu": 1},
        "max_failures": form.max_failures,
    }


def checkpoints(cluster: Cluster, name: str) -> dict[tuple[str, str], set[str]]:
    """(trial folder, ``checkpoint_*`` folder) -> its file names, of launch ``name``, read
    from moto directly (also while the proxy is cut)."""
    found: dict[tuple[str, str], set[str]] = {}
    pages = cluster.s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"runs/{name}/"
    )
    for page in pages:
        for item in page.get("Contents", []):
            parts = item["Key"].split("/")
            if len(parts) > 4 and parts[3].startswith("checkpoint_"):
                found.setdefault((parts[2], parts[3]), set()).add("/".join(parts[4:]))
    return found


def progress(cluster: Cluster, name: str, trials: int, reports: int) -> float:
    """The share of the grid's checkpointed reports in the bucket: per trial folder, its
    newest complete checkpoint's index + 1 (Ray numbers them from 0 and keeps the last two)."""
    newest: dict[str, int] = {}
    for (trial, folder), files in checkpoints(cluster, name).items():
        if "state.pt" in files:
            index = int(folder.rpartition("_")[2])
            newest[trial] = max(newest.get(trial, -1), index)
    done = sum(min(index + 1, reports) for index in newest.values())
    return done / (trials * reports)


class Launch:
    """One launch driven as a user would (``ablate run``, then ``ablate resume`` after a
    failed or killed driver), with the schedule's faults fired at it from other threads."""

    def __init__(
        self,
        cluster: Cluster,
        console: Console,
        space: Path,
        name: str,
        reports: int,
        trials: int,
        faults: list[Fault],
        max_resumes: int,
        timeout_s: float,
    ) -> None:
        self.cluster, self.console, self.space, self.name = cluster, console, space, name
        self.reports, self.trials = reports, trials
        self.faults, self.max_resumes, self.timeout_s = faults, max_resumes, timeout_s
        self.drivers: list[dict[str, Any]] = []
        self.outcome = "not launched"
        self.done = threading.Event()
        self.started = 0.0
        self._lock = threading.Lock()
        self._driver: tuple[str, subprocess.Popen] | None = None
        self._killed: set[str] = set()
        self._outages: set[int] = set()
        self._nodes = threading.Lock()  # one node operation at a time
        self._threads: list[threading.Thread] = []

    def now(self) -> float:
        return time.perf_counter() - self.started

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{self.now():6.0f} s[/] {self.name}: {text}")

    def run(self) -> float:
        """Drive the launch to its end (or the timeout); its wall seconds."""
        self.started = time.perf_counter()
        monitor = threading.Thread(target=self._monitor, daemon=True)
        monitor.start()
        failures = 0
        command = ["run", str(self.space)]
        extra = ["--tracking-uri", self.cluster.tracking_uri]
        while True:
            code, killed = self._drive(command + extra)
            if code == 0:
                self.outcome = "finished"
                break
            if code is None:
                self.outcome = f"timed out after {self.timeout_s:.0f} s"
                break
            if not killed:
                failures += 1
                if failures > self.max_resumes:
                    self.outcome = f"given up after {self.max_resumes} resumes"
                    break
                self._await_outages()
                time.sleep(RESUME_PAUSE_S)
            command, extra = ["resume", self.name], []
        self.say(self.outcome)
        wall = self.now()
        self.done.set()
        monitor.join()
        for thread in self._threads:
            thread.join()
        return wall

    def _drive(self, args: list[str]) -> tuple[int | None, bool]:
        """Run one driver to its exit: (exit code or None when timed out, killed by us)."""
        c = self.cluster
        name = f"driver-{self.name}-{len(self.drivers) + 1}"
        argv = [sys.executable, "-m", "ablate.cli", *args, "--address", "auto"]
        argv += ["--storage", c.storage, "--workdir", str(c.driver_dir)]
        record: dict[str, Any] = {"command": " ".join(args[:2]), "started_s": self.now()}
        # Ray Tune saves its experiment state every second; wide lines keep the record's tail
        env = {**c.env, "TUNE_GLOBAL_CHECKPOINT_S": "1", "COLUMNS": "160"}
        proc = c.dep.start(name, argv, env=env, cwd=c.driver_dir)
        with self._lock:
            self._driver = name, proc
        self.say(f"{name}: ablate {record['command']}")
        code: int | None
        try:
            code = proc.wait(timeout=max(1.0, self.timeout_s - self.now()))
        except subprocess.TimeoutExpired:
            code = None
        with self._lock:
            self._driver = None
            killed = name in self._killed
        c.dep.stop(name, signal.SIGKILL)
        log = (c.root / f"{name}.log").read_text(errors="replace").splitlines()
        record.update(
            ended_s=self.now(),
            exit=code if code is not None else "timed out",
            killed_by_harness=killed,
            # Ray Tune's line for each failure of a trial (retried or given up), and why
            failures=dict(Counter(m[1] for m in map(FAILED.match, log) if m)),
            causes=dict(Counter(m[2] or m[1] for m in map(CAUSE.match, log) if m)),
            tail=[line for line in log if line.strip()][-TAIL_LINES:],
        )
        self.drivers.append(record)
        self.say(f"{name} exited {record['exit']}" + (" (killed by the harness)" if killed else ""))
        return code, killed

    def _await_outages(self) -> None:
        """A user who reads that the tracking server or the storage is unreachable waits
        until it is back before resuming: wait for the outages in progress to end."""
        while True:
            with self._lock:
                if not self._outages:
                    return
            time.sleep(1)

    # -- the faults ---------------------------------------------------------------------
    def _monitor(self) -> None:
        """Fire each fault when its progress share (or its host's start + offset) is
        reached; mark those left when the launch ends as skipped."""
        pending = list(self.faults)
        while not self.done.wait(POLL_S) and pending:
            try:
                share = progress(self.cluster, self.name, self.trials, self.reports)
            except Exception as exc:  # noqa: BLE001 - a missed look, not a stopped monitor
                self.say(f"progress unknown this time: {type(exc).__name__}: {exc}")
                continue
            for fault in list(pending):
                if fault.at_progress is not None:
                    due = share >= fault.at_progress
                else:
                    host = self.faults[fault.host - 1]
                    if host.status == "skipped":
                        fault.status, fault.detail = "skipped", "its host fault was skipped"
                        pending.remove(fault)
                        continue
                    due = host.started_s is not None and self.now() >= host.started_s + (
                        fault.offset_s or 0.0
                    )
                if due:
                    pending.remove(fault)
                    fault.progress = share
                    thread = threading.Thread(target=self._fire, args=(fault,), daemon=True)
                    self._threads.append(thread)
                    thread.start()
        for fault in pending:
            fault.status, fault.detail = "skipped", "the launch ended first"

    def _fire(self, fault: Fault) -> None:
        fault.started_s, fault.status = self.now(), "running"
        self.say(f"fault {fault.index} {fault.kind} ({fault.length()}) at {fault.progress:.0%}")
        try:
            getattr(self, f"_{fault.kind}")(fault)
            if fault.status == "running":
                fault.status = "done"
        except Exception as exc:  # noqa: BLE001 - recorded: the harness itself failed
            fault.status, fault.detail = "error", f"{type(exc).__name__}: {exc}"[:300]
        fault.ended_s = self.now()
        self.say(f"fault {fault.index} {fault.kind} {fault.status}: {fault.detail}")

    def _kill_worker(self, fault: Fault) -> None:
        c = self.cluster
        with self._nodes:
            workers = sorted(c.running_workers())
            if not workers:
                fault.status, fault.detail = "skipped", "no worker node running"
                return
            victim = workers[fault.target % len(workers)]
            c.kill_node(victim)
        if self.done.wait(fault.duration_s):
            fault.detail = f"{victim} killed; the launch ended before a fresh worker"
            return
        with self._nodes:
            fresh = c.add_worker()
        fault.detail = (
            f"{victim} killed, {fresh} started {self.now() - fault.started_s:.0f} s later"
        )

    def _kill_driver(self, fault: Fault) -> None:
        """SIGKILL the driver, or the next one when none runs (the harness waits for an
        outage to end before it resumes a failed launch)."""
        while True:
            with self._lock:
                if self._driver is not None and self._driver[1].poll() is None:
                    name = self._driver[0]
                    self._killed.add(name)
                    break
            if self.done.wait(0.5):
                fault.status, fault.detail = "skipped", "the launch ended first"
                return
        self.cluster.dep.stop(name, signal.SIGKILL)
        fault.detail = f"{name} killed"

    def _outage(
        self, fault: Fault, stop: Callable[[], None], start: Callable[[], None], what: str
    ) -> None:
        """``stop()``, ``fault.duration_s`` (less when the launch ends first), ``start()``
        (which returns once the service answers); the detail says how long it was gone."""
        with self._lock:
            self._outages.add(fault.index)
        stop()
        gone = self.now()
        try:
            if self.done.wait(fault.duration_s):
                fault.status = "cut short"
        finally:
            start()
            with self._lock:
                self._outages.discard(fault.index)
        fault.detail = (
            f"{what} stopped in {gone - fault.started_s:.0f} s, answering again "
            f"{self.now() - gone:.0f} s later"
            + (": the launch ended meanwhile" if fault.status == "cut short" else "")
        )

    def _mlflow_down(self, fault: Fault) -> None:
        c = self.cluster
        self._outage(fault, c.stop_mlflow, c.start_mlflow, "tracking server")

    def _s3_cut(self, fault: Fault) -> None:
        c = self.cluster
        self._outage(fault, c.s3_proxy.pause, c.s3_proxy.resume, "object store")


def trial_points(
    cluster: Cluster, experiment: str
) -> tuple[dict[str, list[Any]], dict[str, Counter]]:
    """The trial runs of ``experiment`` by run name, and per run name how many times each
    (metric, step) point was logged (over all its runs), read from the tracking server."""
    from mlflow import MlflowClient

    client = MlflowClient(cluster.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}, {}
    runs = client.search_runs(
        [found.experiment_id], filter_string="tags.`ablate.kind` = 'trial'", max_results=1000
    )
    by_name: dict[str, list[Any]] = {}
    points: dict[str, Counter] = {}
    for run in runs:
        by_name.setdefault(run.info.run_name, []).append(run)
        counts = points.setdefault(run.info.run_name, Counter())
        for key in run.data.metrics:
            for metric in client.get_metric_history(run.info.run_id, key):
                counts[(key, metric.step)] += 1
    return by_name, points


def judge(cluster: Cluster, name: str, trials: int, expected: dict[str, Counter]) -> dict[str, Any]:
    """Launch ``name``'s trials in MLflow and its checkpoints in the bucket, against the
    points ``expected`` per run name (the reference's; ``{}``: the reference itself)."""
    runs, points = trial_points(cluster, name)
    names = [f"{ROW}-s{seed}" for seed in range(trials)]
    trial_ids = Counter(
        run.data.tags.get("ablate.trial_id") for group in runs.values() for run in group
    )
    twice = {
        run_name: sorted(f"{key}@{step} x{n}" for (key, step), n in counts.items() if n > 1)
        for run_name, counts in points.items()
    }
    missing, per_session, unexpected = {}, {}, {}
    for run_name in names if expected else []:
        want, have = set(expected.get(run_name, ())), set(points.get(run_name, ()))
        lost = sorted(f"{key}@{step}" for key, step in want - have if key not in PER_SESSION)
        lost_session = sorted(f"{key}@{step}" for key, step in want - have if key in PER_SESSION)
        extra = sorted(f"{key}@{step}" for key, step in have - want)
        missing[run_name], per_session[run_name], unexpected[run_name] = (
            lost,
            lost_session,
            extra,
        )
    partial = sorted(
        f"{trial}/{folder}"
        for (trial, folder), files in checkpoints(cluster, name).items()
        if "state.pt" not in files
    )
    return {
        "finished": sum(
            any(run.info.status == "FINISHED" for run in runs.get(run_name, []))
            for run_name in names
        ),
        "trials": trials,
        "status": {
            run_name: [
                run.info.status
                + (f" ({run.data.tags['ablate.error']})" if "ablate.error" in run.data.tags else "")
                for run in runs.get(run_name, [])
            ]
            for run_name in names
        },
        "duplicate_runs": max(
            sum(len(group) - 1 for group in runs.values()),
            sum(n - 1 for n in trial_ids.values()),
        ),
        "twice": sum(len(found) for found in twice.values()),
        "twice_points": {k: v for k, v in twice.items() if v},
        "missing": sum(len(found) for found in missing.values()),
        "missing_points": {k: v for k, v in missing.items() if v},
        "missing_per_session": sum(len(found) for found in per_session.values()),
        "missing_per_session_points": {k: v for k, v in per_session.items() if v},
        "unexpected": sum(len(found) for found in unexpected.values()),
        "unexpected_points": {k: v for k, v in unexpected.items() if v},
        "partial_checkpoints": partial,
        "points": {run_name: counts for run_name, counts in points.items()},
    }


def settled_leftovers(root: Path, groups: set[int], wait_s: float = 15) -> list[str]:
    """The deployment's processes still running ``wait_s`` after it was stopped (a SIGKILLed
    process takes a moment to go)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = leftover_processes(root, groups)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


def schedule_table(faults: list[Fault], title: str, executed: bool) -> Table:
    """The schedule as planned (``executed`` False) or as it ran."""
    table = Table(title=title)
    columns = ["#", "fault", "trigger", "length"]
    columns += ["status", "start s", "end s", "progress", "detail"] if executed else ["target"]
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", "start s", "end s") else "left")
    for f in faults:
        row = [str(f.index), f.kind, f.trigger(), f.length()]
        if executed:
            row += [
                f.status,
                "" if f.started_s is None else f"{f.started_s:.0f}",
                "" if f.ended_s is None else f"{f.ended_s:.0f}",
                "" if f.progress is None else f"{f.progress:.0%}",
                f.detail,
            ]
        else:
            row.append(
                f"worker #{f.target + 1} of those running" if f.kind == "kill_worker" else ""
            )
        table.add_row(*row)
    return table


def drivers_table(drivers: list[dict[str, Any]], title: str) -> Table:
    """One row per driver: its exit, Ray Tune's failures of trials, its last word on them."""
    table = Table(title=title)
    columns = ("#", "command", "start s", "end s", "exit", "trial failures", "last line")
    for column in columns:
        table.add_column(column, justify="left" if column in ("command", "last line") else "right")
    for number, d in enumerate(drivers, start=1):
        # ablate's summary (or progress board) line, else whatever came last
        said = [line for line in d["tail"] if " trials, " in line or "done, " in line]
        table.add_row(
            str(number),
            d["command"],
            f"{d['started_s']:.0f}",
            f"{d['ended_s']:.0f}",
            str(d["exit"]) + (" (killed)" if d["killed_by_harness"] else ""),
            ", ".join(f"{trial} x{n}" for trial, n in d["failures"].items()),
            (said or d["tail"] or [""])[-1][:100],
        )
    return table


def targets(
    chaos: dict[str, Any], drivers: list[dict[str, Any]], leftovers: list[str]
) -> list[tuple[str, str, str, bool | None]]:
    """(check, value, target, met; None: reported, no target) rows of the verdict."""
    n = chaos["trials"]
    last_exit = drivers[-1]["exit"] if drivers else "no launch"
    causes: Counter = sum((Counter(d["causes"]) for d in drivers), Counter())
    failed = ", ".join(f"{cause} x{count}" for cause, count in causes.most_common())
    return [
        ("trials FINISHED", f"{chaos['finished']}/{n}", f"{n}/{n}", chaos["finished"] == n),
        ("duplicate trial runs", str(chaos["duplicate_runs"]), "0", chaos["duplicate_runs"] == 0),
        ("(metric, step) logged twice", str(chaos["twice"]), "0", chaos["twice"] == 0),
        ("points missing vs reference", str(chaos["missing"]), "0", chaos["missing"] == 0),
        ("per-session points missing", str(chaos["missing_per_session"]), "-", None),
        ("points not in the reference", str(chaos["unexpected"]), "-", None),
        ("partial checkpoint folders", str(len(chaos["partial_checkpoints"])), "-", None),
        ("trial failures in the drivers", failed or "0", "-", None),
        ("launch's last exit", str(last_exit), "0", last_exit == 0),
        ("processes left running", str(len(leftovers)), "0", not leftovers),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="the fault schedule's seed")
    parser.add_argument("--short", action="store_true", help="the CI form (4 trials, ~7 min)")
    parser.add_argument("--trials", type=int, help="trials of the grid (default: the form's)")
    parser.add_argument("--steps", type=int, help="steps per trial (default: the form's)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every outage's length by this"
    )
    parser.add_argument("--max-resumes", type=int, default=3, help="resumes after failed drivers")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON record")
    parser.add_argument("--keep", action="store_true", help="keep the deployment's temp folder")
    args = parser.parse_args()
    from ablate.config import parse_experiment

    form = SHORT if args.short else FULL
    form = dataclasses.replace(
        form, trials=args.trials or form.trials, steps=args.steps or form.steps
    )
    faults = plan(random.Random(args.seed), form, args.scale)
    console = Console()
    missing = missing_tools()
    if missing:
        console.print(f"chaos: cannot deploy: {missing}")
        return 2
    started = time.perf_counter()
    wall: dict[str, float] = {}
    with deploy(workers=2, head_cpus=0, prefix="ablate-chaos-", keep=args.keep) as cluster:
        wall["deploy"] = cluster.setup_s
        spaces = {}
        for name in ("reference", "chaos"):
            raw = experiment(name, form, form.trials, form.steps)
            reports = parse_experiment(raw, name).train.validations
            spaces[name] = cluster.driver_dir / f"{name}.yaml"
            spaces[name].write_text(yaml.safe_dump(raw))
        console.print(
            f"chaos: {form.trials} trials x {form.steps} steps, 2 worker nodes; "
            f"deployed in {cluster.setup_s:.0f} s ({cluster.root})"
        )
        common = dict(cluster=cluster, console=console, reports=reports, trials=form.trials)
        reference = Launch(
            **common, space=spaces["reference"], name="reference", faults=[], max_resumes=0,
            timeout_s=form.timeout_s,
        )  # fmt: skip
        wall["reference"] = reference.run()
        ref = judge(cluster, "reference", form.trials, {})
        ref_ok = ref["finished"] == form.trials and ref["twice"] == 0
        chaos = Launch(
            **common, space=spaces["chaos"], name="chaos", faults=faults,
            max_resumes=args.max_resumes, timeout_s=form.timeout_s,
        )  # fmt: skip
        if ref_ok:
            console.print(
                schedule_table(faults, f"Fault schedule, seed {args.seed}", executed=False)
            )
            wall["chaos"] = chaos.run()
        else:
            console.print("[red]the reference launch did not finish cleanly: no chaos launch[/]")
            for fault in faults:
                fault.status, fault.detail = "skipped", "no chaos launch"
        measured = time.perf_counter()
        verdict = judge(cluster, "chaos", form.trials, ref["points"]) if ref_ok else None
        wall["verdict"] = time.perf_counter() - measured
        root, groups = cluster.root, cluster.dep.groups
    leftovers = settled_leftovers(root, groups)
    wall["total"] = time.perf_counter() - started

    console.print(drivers_table(reference.drivers, f"Reference launch: {reference.outcome}"))
    console.print(drivers_table(chaos.drivers, f"Chaos launch: {chaos.outcome}"))
    console.print(schedule_table(faults, f"Faults as executed, seed {args.seed}", executed=True))
    rows = targets(verdict, chaos.drivers, leftovers) if verdict else []
    rows.insert(
        0,
        (
            "reference FINISHED, 0 twice",
            f"{ref['finished']}/{form.trials}, {ref['twice']}",
            f"{form.trials}/{form.trials}, 0",
            ref_ok,
        ),
    )
    table = Table(title=f"Verdict, seed {args.seed}{' (short)' if args.short else ''}")
    for column in ("check", "value", "target", "met"):
        table.add_column(column)
    for check, value, target, met in rows:
        table.add_row(check, value, target, {True: "yes", False: "[red]NO[/]", None: ""}[met])
    console.print(table)
    for left in leftovers:
        console.print(f"left running: {left}")
    passed = all(met is not False for *_, met in rows)
    console.print(
        f"wall: deploy {wall['deploy']:.0f} s, reference {wall['reference']:.0f} s, chaos "
        f"{wall.get('chaos', 0):.0f} s, total {wall['total']:.0f} s; "
        f"{'all targets met' if passed else 'targets NOT met'}"
    )
    record = {
        "seed": args.seed,
        "form": "short" if args.short else "full",
        "settings": {
            **dataclasses.asdict(form),
            "scale": args.scale,
            "max_resumes": args.max_resumes,
        },
        "schedule": [
            {
                "planned": {
                    k: getattr(f, k)
                    for k in (
                        "index",
                        "kind",
                        "at_progress",
                        "host",
                        "offset_s",
                        "duration_s",
                        "target",
                    )
                },
                "executed": {
                    k: getattr(f, k)
                    for k in ("status", "started_s", "ended_s", "progress", "detail")
                },
            }
            for f in faults
        ],
        "wall_s": wall,
        "outcome": {"reference": reference.outcome, "chaos": chaos.outcome},
        "drivers": {"reference": reference.drivers, "chaos": chaos.drivers},
        "reference": {k: v for k, v in ref.items() if k != "points"},
        "verdict": {k: v for k, v in (verdict or {}).items() if k != "points"},
        "targets": [
            {"check": check, "value": value, "target": target, "met": met}
            for check, value, target, met in rows
        ],
        "leftover_processes": leftovers,
        "passed": passed,
    }
    out = args.out / f"chaos-{'short-' if args.short else ''}{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"-> {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
