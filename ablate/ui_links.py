"""The MLflow UI's addresses that ablate writes (in tables, dashboards and ``ablate ui``).

Kept apart from :mod:`ablate.mlflow_ui` so that the reports layer (``dashboards``), which
links runs, depends on a module that depends on nothing of ours.
"""

from __future__ import annotations

#: The UI's switch between its GenAI and machine-learning views, as a URL parameter. MLflow
#: 3.17's UI reads the view from this parameter, else from the browser's local storage
#: (``mlflow.workflowType``, set only by the UI's own toggle), else GenAI; the experiment tag
#: ``mlflow.experimentKind`` decides only an experiment page opened without it. Nothing a
#: server or a run holds picks the view of a run page, so every UI link ablate makes
#: carries the parameter (the README says so).
ML_VIEW = "workflowType=machine_learning"
#: The shared runs-table view ``ablate ui`` links to (``ablate.mlflow_ui`` stores its state).
VIEW_KEY = "ablate-study"


def runs_page_url(base_url: str, experiment_id: str | None = None) -> str:
    """The UI page of an experiment's runs in the study view (or of the experiments), in the
    UI's machine-learning view: MLflow 3's UI otherwise opens experiments as GenAI ones."""
    base = base_url.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{ML_VIEW}"
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&{ML_VIEW}"


def run_page_url(base_url: str, experiment_id: str, run_id: str) -> str:
    """The UI page of one run, in the machine-learning (classic) run view (see
    :data:`ML_VIEW`)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"
