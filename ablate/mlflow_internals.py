"""The one place that uses MLflow modules its documentation does not cover.

MLflow 3.17 (pinned, ``mlflow==3.17.2``) sets the Source and git columns of its runs table
from tags that its fluent API resolves in ``mlflow.tracking.context.registry`` and
``mlflow.utils.git_utils``, under names kept in ``mlflow.utils.mlflow_tags``. ablate makes its
runs through ``MlflowClient`` with explicit run ids (many in Ray workers), so it resolves the
same tags itself, here and nowhere else. The tag *names* are documented ("system tags"); the
modules that hold them and the resolvers are not.
``tests/unit/core/test_mlflow_internals.py`` checks all of it against the installed MLflow and
fails loudly when an upgrade moves or renames it.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_RUN_NOTE,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

__all__ = [
    "MLFLOW_DATASET_CONTEXT",
    "MLFLOW_GIT_BRANCH",
    "MLFLOW_GIT_COMMIT",
    "MLFLOW_GIT_REPO_URL",
    "MLFLOW_RUN_NOTE",
    "MLFLOW_SOURCE_NAME",
    "MLFLOW_SOURCE_TYPE",
    "MLFLOW_USER",
    "SOURCE_TAGS",
    "source_tags",
]

#: The tags MLflow's fluent API sets on a run: who ran it, from which code.
SOURCE_TAGS = (
    MLFLOW_USER,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_REPO_URL,
)


def source_tags() -> dict[str, str]:
    """The :data:`SOURCE_TAGS` MLflow's fluent API would set on a run started here; when the
    main script is not in a git repository (the ``ablate`` console script), the git commit,
    branch and remote of ablate's own code instead."""
    code = Path(__file__).resolve().parent
    tags = {k: str(v) for k, v in resolve_tags().items() if k in SOURCE_TAGS}
    if MLFLOW_GIT_COMMIT not in tags:
        found = {
            MLFLOW_GIT_COMMIT: get_git_commit(str(code)),
            MLFLOW_GIT_BRANCH: get_git_branch(str(code)),
            MLFLOW_GIT_REPO_URL: get_git_repo_url(str(code)),
        }
        tags.update({k: str(v) for k, v in found.items() if v})
    return tags
