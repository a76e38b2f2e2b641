"""Every shell command README.md shows runs, verbatim, as a user runs it (issue 25).

The commands are read from README.md itself: each line of a fenced ```bash / ```sh /
```shell block (backslash continuations joined, comment lines dropped; ``a && b`` is two
commands), and each ``$ `` line of a fenced ```text / ```console transcript. They run in
README order, each as a subprocess through bash, in one fresh folder that holds what a clone
holds (``search_spaces/``, ``benchmarks/``), so later commands see what earlier ones made
(the demo's store, then its table, export, predict...).

A command that needs a cluster, a GPU or paper-scale compute matches a line of ``NOT_RUN``,
which says why. Adding a runnable command to the README needs nothing here; a command that
cannot run here needs one line in ``NOT_RUN``. ``test_every_readme_command_is_run_or_listed``
(fast) fails for a command that matches nothing and for a line of ``NOT_RUN`` that matches no
command any more. A trailing ``# prints: TEXT`` comment is checked against the output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.paths import REPO

README = REPO / "README.md"
#: What of a clone the README's commands read (relative paths in the commands).
CLONE_PARTS = ("search_spaces", "benchmarks")

_CLUSTER = (
    "needs a Ray cluster, PostgreSQL, an mlflow server and S3: "
    "tests/integration/test_cluster.py runs it"
)
#: README commands the test does not run: (pattern searched in the command, why).
NOT_RUN: list[tuple[str, str]] = [
    (r"^pip install ", "CI's install step (.ci/run runs it before pytest); here it would "
     "point the editable install at the test's copy"),
    (r"^pytest$", "the test suite itself (.ci/run runs it)"),
    (r"\bmlflow models serve ", "a server that runs until stopped; "
     "tests/integration/test_cluster.py serves an exported model and queries /invocations"),
    (r"^python -c \"import secrets", f"writes the cluster token to ~/ray_token; {_CLUSTER}"),
    (r"^chmod 600 ~/ray_token$", f"the cluster token's mode; {_CLUSTER}"),
    (r"^export (RAY_AUTH_MODE|AWS_ENDPOINT_URL)=", f"the cluster's environment; {_CLUSTER}"),
    (r"^mlflow server ", _CLUSTER),
    (r"^ray (start|job) ", _CLUSTER),
    (r"--storage s3://", _CLUSTER),
]  # fmt: skip

#: README sections whose blocks another test runs verbatim (as bash scripts, on files it
#: builds, checking what they make): section title -> that test.
RUN_ELSEWHERE: dict[str, str] = {
    "Your own data": "tests/integration/test_own_data.py",
}

#: Files a README command reads that the user brings (made here from the simulator).
USER_FILES = ("subject_low.nii.gz", "subject_full.nii.gz")
#: Seconds one README command may take (the demo is the slowest: ~2.5 min on 2 idle cores,
#: several times that on loaded ones).
COMMAND_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Command:
    text: str  # as the README writes it (continuations joined, one of a && chain)
    prints: str  # what its ``# prints:`` comment says it prints ("" if none)
    line: int  # where it is in README.md


def _logical_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in block:
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1].rstrip() + " "
            continue
        out.append((start, (pending + raw.strip()).strip()))
        pending = ""
    return out


def _split(line: str) -> tuple[list[str], str]:
    """The commands of one logical line (split at top-level ``&&``) and its ``# prints:``."""
    prints = ""
    code = line
    match = re.search(r"\s#\s*(.*)$", line)
    if match and line.count("'", 0, match.start()) % 2 == 0:
        code, comment = line[: match.start()], match.group(1)
        if comment.startswith("prints:"):
            prints = comment[len("prints:") :].strip()
    return [c.strip() for c in code.split(" && ") if c.strip()], prints


def readme_commands(text: str) -> list[Command]:
    """Every shell command of README.md's fenced blocks, in order."""
    commands: list[Command] = []
    fence, block, section = None, [], ""
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if fence is None:
            if raw.startswith("## "):
                section = raw[3:].strip()
            if stripped.startswith("```"):
                fence, block = stripped[3:].strip().lower(), []
            continue
        if stripped.startswith("```"):
            if section in RUN_ELSEWHERE:
                lines = []
            elif fence in ("bash", "sh", "shell"):
                lines = [(n, r) for n, r in block if r.strip() and not r.strip().startswith("#")]
            elif fence in ("text", "console"):
                lines = [(n, r.strip()[2:]) for n, r in block if r.strip().startswith("$ ")]
            else:
                lines = []
            for start, line in _logical_lines(lines):
                parts, prints = _split(line)
                commands += [Command(p, prints if p == parts[-1] else "", start) for p in parts]
            fence = None
            continue
        block.append((number, raw))
    return commands


def not_run_reason(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN if re.search(pattern, command)), None)


COMMANDS = readme_commands(README.read_text())
RUN = [c for c in COMMANDS if not_run_reason(c.text) is None]


def test_every_readme_command_is_run_or_listed() -> None:
    for section, test in RUN_ELSEWHERE.items():
        assert f"\n## {section}\n" in README.read_text(), f"README has no section {section!r}"
        assert (REPO / test).is_file(), test
    assert len(RUN) >= 10, [c.text for c in RUN]  # the parser found the README's commands
    used = {pattern for pattern, _ in NOT_RUN if any(re.search(pattern, c.text) for c in COMMANDS)}
    stale = [pattern for pattern, _ in NOT_RUN if pattern not in used]
    assert not stale, f"NOT_RUN lines that match no README command any more: {stale}"
    for must in ("ablate demo", "ablate export demo", "--confirm-seeds 3", "ablate count"):
        assert any(must in c.text for c in RUN), f"the README test no longer runs {must!r}"
    # each README command is either run below or listed with its reason: nothing else
    assert all((c in RUN) != (not_run_reason(c.text) is not None) for c in COMMANDS)
    # a command that prints the next one to run (export -> predict): the README runs that
    for i, command in enumerate(COMMANDS):
        printed = re.search(r"(ablate \S+ .*?) INPUT OUTPUT", command.prints)
        if printed:
            assert COMMANDS[i + 1].text.startswith(printed.group(1) + " "), COMMANDS[i + 1]


def _user_files(folder: Path, scratch: Path) -> None:
    """The low-dose and full-dose volume of one simulated test subject, as NIfTI, as a user
    brings them (``ablate predict`` / ``ablate evaluate`` read them)."""
    import nibabel as nib
    import pandas as pd

    sim = scratch / "sim"
    done = subprocess.run(
        ["ablate", "data", "simulate", "--out", str(sim)],
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = pd.read_parquet(sim / "manifest.parquet")
    subject = manifest.loc[manifest["split"] == "test", "subject"].iloc[0]
    scale = float(manifest.loc[manifest["subject"] == subject, "scale"].iloc[0])
    for kind, name in (("lpet", USER_FILES[0]), ("spet", USER_FILES[1])):
        stack = np.load(sim / "subjects" / subject / f"{kind}.npy") * scale  # [z, y, x]
        volume = np.ascontiguousarray(np.transpose(stack, (2, 1, 0)), dtype=np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), folder / name)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder holding what a clone of the repository holds, and the user's files."""
    folder = tmp_path_factory.mktemp("readme")
    for part in CLONE_PARTS:
        shutil.copytree(REPO / part, folder / part)
    _user_files(folder, tmp_path_factory.mktemp("user-data"))
    return folder


def _env() -> dict[str, str]:
    """The user's environment, less what would point a command at another store; a wide
    terminal, so that no printed path is wrapped."""
    drop = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "COLUMNS": "400"}


@pytest.mark.slow
@pytest.mark.parametrize("command", RUN, ids=[f"L{c.line}:{c.text[:60]}" for c in RUN])
def test_readme_command_runs_verbatim(command: Command, clone: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", command.text],
        cwd=clone,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"README line {command.line}: {command.text}\n{output[-6000:]}"
    flat = " ".join(output.split())
    assert " ".join(command.prints.split()) in flat, (command.prints, output[-3000:])
    if command.text.startswith("ablate dashboard "):
        (index,) = re.findall(r"dashboard -> (\S+)", output)
        page = (clone / index).read_text()  # clone / an absolute path is that path
        assert "<table" in page
        if "loss-weights" in command.text:  # a search: the study view beside the confirm grid
            assert "Intermediate values and optimisation history" in page
