"""The tidy results frame: every test metric per trial, per test subject and per AMS sample.

One line per (trial, ``level``): ``level`` says what a line holds.

- ``trial``: one per trial (any status), its logged test metrics (``psnr`` ... ``sd``): the
  mean over test subjects. ``subject`` and ``sample`` are empty.
- ``subject``: one per completed trial x test subject, from the trial's
  ``test_subjects.parquet`` (the logged sample's metrics, ``ams_*`` when K > 1, ``input_*`` for
  the low-dose input, ``n_slices``).
- ``sample``: one per completed trial x test subject x AMS sample (K > 1), from
  ``test_samples.parquet``.

Columns, before the metrics: ``experiment, launch`` (the launch's name, else its parent run
id), ``parent_run_id, run_id, row,
row_index, label, seed, dataset, status, error, start_time, level, subject, sample,
n_slices``. Metric columns carry their MLflow names. The analysis
(``ablate.analysis.study``) reads subject lines where a metric has them, else trial lines (a
trial mean is the seed-level datum of the same test). The frame is self-contained: written as
Parquet, it is read back without the tracking store (:func:`results_from_tidy`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

#: The columns of the tidy frame before the metric columns, in this order.
KEY_COLUMNS = [
    "experiment",
    "launch",
    "parent_run_id",
    "run_id",
    "row",
    "row_index",
    "label",
    "seed",
    "dataset",
    "status",
    "error",
    "start_time",
    "level",
    "subject",
    "sample",
    "n_slices",
]
#: The per-trial artifacts the subject and sample lines come from (written by the trainable).
SUBJECTS_ARTIFACT = "test_subjects.parquet"
SAMPLES_ARTIFACT = "test_samples.parquet"
LEVELS = ("trial", "subject", "sample")


def _text(value: Any) -> str:
    """A string cell, or '' for a missing one (None, NaN, NA: parquet writes each)."""
    return value if isinstance(value, str) else ""


def _dataset(trial: pd.Series) -> str:
    """What a trial was tested on: the launch's dataset identity when logged, else its data
    folder, else its simulator preset (and data seed)."""
    for key in ("dataset", "params.dataset", "params.data.path"):
        value = trial.get(key)
        if isinstance(value, str) and value not in ("", "None", "null"):
            return value
    preset = trial.get("params.data.preset")
    seed = trial.get("params.data.seed")
    return f"{preset} (seed {seed})" if isinstance(preset, str) else "unknown"


def _latest(results: pd.DataFrame) -> pd.DataFrame:
    """The latest trial per row and seed: a rerun supersedes (as in the ablation table)."""
    ordered = results.sort_values("start_time", kind="stable", na_position="first")
    return ordered.drop_duplicates(["row", "seed"], keep="last").sort_index()


def tidy_frame(results: pd.DataFrame, tracking_uri: str | None = None) -> pd.DataFrame:
    """The tidy frame of a results frame (``dashboards.results.load_results``).

    Per-subject and per-sample artifacts are read in place when the runs' artifacts are on
    this machine, else through ``tracking_uri``; a trial that did not log them has its trial
    line only."""
    from dashboards.results import fetch_artifact

    results = _latest(results)
    lines: list[dict[str, Any]] = []
    parts: list[pd.DataFrame] = []
    for _, trial in results.iterrows():
        keys = {
            "experiment": trial["experiment"],
            "launch": _text(trial.get("launch")) or trial["parent_run_id"],
            "parent_run_id": trial["parent_run_id"],
            "run_id": trial["run_id"],
            "row": trial["row"],
            "row_index": trial["row_index"],
            "label": trial["label"],
            "seed": trial["seed"],
            "dataset": _dataset(trial),
            "status": trial["status"],
            "error": trial["error"],
            "start_time": trial["start_time"],
        }
        metrics = {
            c.removeprefix("metrics."): trial[c]
            for c in trial.index
            if c.startswith("metrics.") and pd.notna(trial[c])
        }
        lines.append({**keys, "level": "trial", **metrics})
        if trial["status"] != "completed":
            continue
        for level, name in (("subject", SUBJECTS_ARTIFACT), ("sample", SAMPLES_ARTIFACT)):
            path = fetch_artifact(tracking_uri, trial["run_id"], name, trial["artifact_uri"])
            if path is not None:
                part = pd.read_parquet(path)
                parts.append(part.assign(**keys, level=level))
    frame = pd.concat([pd.DataFrame(lines), *parts], ignore_index=True)
    for col in KEY_COLUMNS:
        if col not in frame:
            frame[col] = pd.NA
    frame["subject"] = frame["subject"].astype("string")
    frame["sample"] = frame["sample"].astype("Int64")
    frame["seed"] = frame["seed"].astype("Int64")
    frame["n_slices"] = frame["n_slices"].astype("Int64")
    metrics_cols = [c for c in frame.columns if c not in KEY_COLUMNS]
    order = {level: i for i, level in enumerate(LEVELS)}
    frame = frame.sort_values(
        ["row_index", "seed", "level", "subject", "sample"],
        key=lambda s: s.map(order) if s.name == "level" else s,
        kind="stable",
    )
    return frame[KEY_COLUMNS + metrics_cols].reset_index(drop=True)


def is_tidy(df: pd.DataFrame) -> bool:
    """Whether a frame read from Parquet is a tidy frame (else a results frame)."""
    return "level" in df.columns and "subject" in df.columns


def results_from_tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """The results frame (one line per trial) of a tidy frame, for the ablation table."""
    from dashboards.results import BASE_COLUMNS

    trials = frame[frame["level"] == "trial"]
    metrics = [c for c in frame.columns if c not in KEY_COLUMNS]
    out = pd.DataFrame(
        {
            "experiment": trials["experiment"],
            "run_id": trials["run_id"],
            "parent_run_id": trials["parent_run_id"],
            "run_name": trials["row"] + "-s" + trials["seed"].astype(str),
            "row": trials["row"],
            "row_index": trials["row_index"],
            "label": trials["label"],
            "seed": trials["seed"],
            "status": trials["status"],
            "error": trials["error"].fillna(""),
            "start_time": trials["start_time"],
            "end_time": pd.NaT,
            "artifact_uri": None,
        }
    )
    for col in metrics:
        out[f"metrics.{col}"] = trials[col].astype(float)
    return out[BASE_COLUMNS + [f"metrics.{c}" for c in metrics]].reset_index(drop=True)
