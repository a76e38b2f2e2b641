"""The tidy results frame (``ablate.analysis.frame``: one line per trial, test subject and AMS
sample) built from a study's MLflow runs, and the results frame read back from a tidy one.

Here, not in ``ablate.analysis``, because it reads MLflow through ``dashboards.results``: the
analysis itself takes a frame and never imports the reports layer.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ablate.analysis.frame import KEY_COLUMNS, LEVELS, SAMPLES_ARTIFACT, SUBJECTS_ARTIFACT
from dashboards.results import BASE_COLUMNS, fetch_artifact


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
    """The latest trial per row, seed and fold: a rerun supersedes (as in the ablation table)."""
    ordered = results.sort_values("start_time", kind="stable", na_position="first")
    fold = results["fold"] if "fold" in results else pd.Series(pd.NA, index=results.index)
    ordered = ordered.assign(fold=fold)
    return ordered.drop_duplicates(["row", "seed", "fold"], keep="last").sort_index()


def tidy_frame(results: pd.DataFrame, tracking_uri: str | None = None) -> pd.DataFrame:
    """The tidy frame of a results frame (``dashboards.results.load_results``).

    Per-subject and per-sample artifacts are read in place when the runs' artifacts are on
    this machine, else through ``tracking_uri``; a trial that did not log them has its trial
    line only."""
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
            "fold": trial["fold"],
            "dataset": _dataset(trial),
            "dataset_sha256": _text(trial.get("dataset_sha256")),
            "reference": _text(trial.get("reference")),
            "code_version": _text(trial.get("code_version")),
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
    frame["fold"] = frame["fold"].astype("Int64")
    frame["n_slices"] = frame["n_slices"].astype("Int64")
    metrics_cols = [c for c in frame.columns if c not in KEY_COLUMNS]
    order = {level: i for i, level in enumerate(LEVELS)}
    frame = frame.sort_values(
        ["row_index", "seed", "level", "subject", "sample"],
        key=lambda s: s.map(order) if s.name == "level" else s,
        kind="stable",
    )
    return frame[KEY_COLUMNS + metrics_cols].reset_index(drop=True)


def results_from_tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """The results frame (one line per trial) of a tidy frame, for the ablation table."""
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
            "fold": trials["fold"],
            "fold_hash": "",
            "dataset": trials["dataset"],
            "dataset_sha256": trials["dataset_sha256"],
            "launch": trials["launch"],
            "reference": trials["reference"].where(trials["reference"] != "", None),
            "code_version": trials["code_version"],
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
