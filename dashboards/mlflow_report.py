"""The launch's report on its MLflow parent run, so MLflow's own UI shows the ablation table.

At the end of a launch the driver calls :func:`attach_report` (handed to it in the launch's
:class:`ablate.launch.job.Job`): the ablation table with its contrasts and claims (markdown and
HTML, and as the parent run's description, MLflow's ``mlflow.note.content``), the effects and
their CI bounds as the parent run's metrics, and the study dashboard, as artifacts.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ablate import tracking
from ablate.mlflow_internals import MLFLOW_RUN_NOTE
from dashboards import contrasts
from dashboards.html import build_dashboard
from dashboards.tables import render, table_for

log = logging.getLogger(__name__)

MAX_NOTE = 7000  # MLflow caps a tag value at 8000 characters


def attach_report(
    tracking_uri: str, experiment: str, parent_run_id: str, launch: str | None = None
) -> list[str]:
    """Log the launch's ablation table with its contrasts and claims
    (``report/ablation_table.md`` and ``.html``, and as the parent run's description), its
    effects and CI bounds as metrics (``dashboards.contrasts.effect_metrics``) and the study
    dashboard (``report/dashboard/index.html``, titled with the ``launch`` name) to the parent
    run. Returns what was attached; a report that cannot be made (no trial finished) is
    logged as a warning and never changes how the launch ended."""
    attached: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "report"
        folder.mkdir()
        try:
            table = table_for(experiment, tracking_uri, parent_run_id=parent_run_id)
            markdown, page = render(table, "md"), render(table, "html")
            try:
                analysis = contrasts.launch_analysis(tracking_uri, experiment, parent_run_id)
                below = contrasts.tables(table.experiment, analysis)
                markdown = "\n".join([markdown] + [contrasts.render(t, "md") for t in below])
                page = "\n".join([page] + [contrasts.render(t, "html") for t in below])
                effects = contrasts.effect_metrics(analysis)
                tracking.log_metrics(tracking_uri, parent_run_id, effects)
            except Exception as err:  # noqa: BLE001 - the table is reported without them
                log.warning("no contrasts for run %s: %s", parent_run_id, err)
            (folder / "ablation_table.md").write_text(markdown, encoding="utf-8")
            (folder / "ablation_table.html").write_text(page, encoding="utf-8")
            note = markdown if len(markdown) <= MAX_NOTE else markdown[:MAX_NOTE] + "\n..."
            tracking.set_tags(tracking_uri, parent_run_id, {MLFLOW_RUN_NOTE: note})
            attached += ["report/ablation_table.md", "report/ablation_table.html"]
            build_dashboard(
                experiment, tracking_uri, folder / "dashboard", parent_run_id=parent_run_id,
                name=launch,
            )  # fmt: skip
            attached.append("report/dashboard/index.html")
        except Exception as err:  # noqa: BLE001 - a report never decides the launch's status
            log.warning("no ablation report for run %s: %s", parent_run_id, err)
        if attached:
            tracking.log_artifacts(tracking_uri, parent_run_id, folder, "report")
    return attached
