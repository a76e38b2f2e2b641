"""The undocumented MLflow modules that :mod:`ablate.mlflow_internals` uses, checked on the
installed MLflow, and the rule that nothing else imports them.

A failure here after an MLflow upgrade means the adapter must be rewritten for the new
MLflow, not that the test needs loosening.
"""

from __future__ import annotations

import re
import subprocess

import mlflow

from ablate import mlflow_internals
from tests.paths import REPO

MLFLOW_CHECKED = "3.17.2"
UNDOCUMENTED = re.compile(r"^\s*(from|import)\s+mlflow\.(utils|tracking\.context)\b", re.M)


def test_the_installed_mlflow_is_the_one_the_adapter_was_written_for() -> None:
    assert mlflow.__version__ == MLFLOW_CHECKED, (
        f"MLflow {mlflow.__version__} is installed, ablate/mlflow_internals.py was written "
        f"against {MLFLOW_CHECKED}: check the modules it imports, then update MLFLOW_CHECKED"
    )


def test_the_tag_names_are_mlflows_documented_system_tags() -> None:
    assert mlflow_internals.SOURCE_TAGS == (
        "mlflow.user",
        "mlflow.source.name",
        "mlflow.source.type",
        "mlflow.source.git.commit",
        "mlflow.source.git.branch",
        "mlflow.source.git.repoURL",
    )
    assert mlflow_internals.MLFLOW_RUN_NOTE == "mlflow.note.content"
    assert mlflow_internals.MLFLOW_DATASET_CONTEXT == "mlflow.data.context"


def test_source_tags_name_the_user_and_ablates_own_commit() -> None:
    tags = mlflow_internals.source_tags()
    assert tags["mlflow.user"]
    assert tags["mlflow.source.type"] in {"LOCAL", "NOTEBOOK", "JOB", "PROJECT"}
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head


def test_nothing_else_imports_mlflows_undocumented_modules() -> None:
    sources = [
        path
        for package in ("ablate", "dashboards", "trainables", "benchmarks")
        for path in (REPO / package).rglob("*.py")
        if path.name != "mlflow_internals.py"
    ]
    offenders = [str(p.relative_to(REPO)) for p in sources if UNDOCUMENTED.search(p.read_text())]
    assert not offenders, (
        f"only ablate/mlflow_internals.py may import mlflow.utils or mlflow.tracking.context: "
        f"{offenders}"
    )
