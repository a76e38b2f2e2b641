"""Reading runs back from MLflow: which runs a launch, a trial or a study holds.

:mod:`ablate.tracking` writes (experiments, runs, params, metrics, tags, artifacts, end
states) and names the tags; this module selects runs by them. Every run filter is written by
:func:`run_filter`, so a tag is never quoted two ways. (The tracking module's own
find-or-create of a trial's run reads through :func:`run_filter` too: it must not import
this module, which imports it.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ablate.tracking import TAG_PARENT, TAG_TRIAL_ID, client, retry, run_filter


def find_runs(
    tracking_uri: str,
    experiment_id: str,
    tags: Mapping[str, str] | None = None,
    *,
    has_metric: str | None = None,
    order_by: list[str] | None = None,
    max_results: int = 50000,
) -> list[Any]:
    """The runs of an experiment holding every tag value of ``tags`` (and a finite
    ``has_metric``), in ``order_by`` order."""
    mlf = client(tracking_uri)
    return list(
        retry(
            lambda: mlf.search_runs(
                [experiment_id],
                filter_string=run_filter(tags, has_metric=has_metric),
                order_by=order_by,
                max_results=max_results,
            )
        )
    )


def trial_run(tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: str) -> Any:
    """The MLflow run of Ray trial ``trial_id`` of a launch, or None before it exists."""
    found = find_runs(
        tracking_uri,
        experiment_id,
        {TAG_TRIAL_ID: trial_id, TAG_PARENT: parent_run_id},
        max_results=1,
    )
    return found[0] if found else None


def child_runs(tracking_uri: str, experiment_id: str, parent_run_id: str) -> list[Any]:
    """Every trial run of a launch (its parent run's children)."""
    return find_runs(tracking_uri, experiment_id, {TAG_PARENT: parent_run_id}, max_results=5000)


def logged_steps(tracking_uri: str, run_id: str) -> dict[str, int]:
    """The last step logged of each metric of a run: what a restarted trial must not log
    again (it replays the steps after its last checkpoint)."""
    mlf = client(tracking_uri)
    run = retry(lambda: mlf.get_run(run_id))
    return {
        key: max(m.step for m in retry(lambda key=key: mlf.get_metric_history(run_id, key)))
        for key in run.data.metrics
    }
